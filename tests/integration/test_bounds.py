"""Input bounds: byte limits on ids and names, model versions that are never paths, embeddings
that would overflow the network, and SubmitLabels counts that equal the rows stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2 as pb
from postclf_errors import NotFoundError
from server.config import LimitsConfig
from tests.integration.support import Running, SmallData, install_model

Code = grpc.StatusCode
MB = "x" * (1 << 20)


def _error(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err = info.value
    return err.code(), dict(err.trailing_metadata() or ()).get("postclf-field", "")


def _label(data: SmallData, i: int, **fields: str) -> pb.Label:
    base = {
        "post_id": str(data.post_ids[i]),
        "label": data.classes[data.label[i]],
        "assessor_id": "a1",
    }
    return pb.Label(**(base | fields))


def test_a_1mb_post_id_is_invalid_in_classify_and_ingest(server: Running, data: SmallData) -> None:
    posts = data.posts(np.arange(5))
    posts[3].post_id = MB
    classify = server.classifier.Classify
    ingest = server.classifier.IngestPosts
    assert _error(lambda: classify(pb.ClassifyRequest(posts=posts))) == (
        Code.INVALID_ARGUMENT,
        "posts[3].post_id",
    )
    assert _error(lambda: ingest(pb.IngestPostsRequest(posts=posts))) == (
        Code.INVALID_ARGUMENT,
        "posts[3].post_id",
    )


def test_post_id_limit_counts_utf8_bytes(server: Running, data: SmallData) -> None:
    posts = data.posts(np.arange(2))
    posts[0].post_id, posts[1].post_id = "é" * 128, "é" * 129  # 256 and 258 bytes
    reply = server.classifier.Classify(pb.ClassifyRequest(posts=posts[:1], skip_pool=True))
    assert reply.predictions[0].post_id == "é" * 128
    assert _error(lambda: server.classifier.Classify(pb.ClassifyRequest(posts=posts))) == (
        Code.INVALID_ARGUMENT,
        "posts[1].post_id",
    )


@pytest.mark.parametrize(
    ("index", "fields", "where"),
    [
        (0, {"assessor_id": MB}, "labels[0].assessor_id"),
        (1, {"post_id": MB}, "labels[1].post_id"),
        (2, {"label": MB}, "labels[2].label"),
        (1, {"query_id": "q" * 129}, "labels[1].query_id"),
    ],
)
def test_oversized_label_fields_are_invalid(
    server: Running, data: SmallData, index: int, fields: dict[str, str], where: str
) -> None:
    labels = [_label(data, i) for i in range(3)]
    labels[index] = _label(data, index, **fields)
    request = pb.SubmitLabelsRequest(labels=labels)
    assert _error(lambda: server.classifier.SubmitLabels(request)) == (
        Code.INVALID_ARGUMENT,
        where,
    )
    assert server.app.service.ledger.labels() == []  # nothing of the call was stored


@pytest.mark.parametrize("version", ["../../models/versions/v0001", "/etc", "v1", "v0001/..", "x"])
def test_a_model_version_is_never_a_path(server: Running, version: str) -> None:
    request = pb.GetModelInfoRequest(version=version)
    assert _error(lambda: server.classifier.GetModelInfo(request)) == (
        Code.INVALID_ARGUMENT,
        "version",
    )


def test_a_version_of_the_right_form_that_does_not_exist_is_not_found(server: Running) -> None:
    request = pb.GetModelInfoRequest(version="v0042")
    assert _error(lambda: server.classifier.GetModelInfo(request))[0] == Code.NOT_FOUND
    assert server.classifier.GetModelInfo(pb.GetModelInfoRequest(version="v0001")).version


def test_the_registry_itself_refuses_path_like_versions(model_registry: Path) -> None:
    registry = ModelRegistry(model_registry)
    for bad in ("../../etc", str(model_registry / "versions" / "v0001"), "v0001/../v0001"):
        with pytest.raises(NotFoundError):
            registry.info(bad)
        with pytest.raises(NotFoundError):
            registry.load(bad)
        with pytest.raises(NotFoundError):
            registry.promote(bad)


def test_huge_finite_embedding_values_are_invalid(server: Running, data: SmallData) -> None:
    posts = data.posts(np.arange(4))
    posts[2].image.CopyFrom(pb.Embedding(f32le=np.full(384, 1e38, "<f4").tobytes()))
    for call in (
        lambda: server.classifier.Classify(pb.ClassifyRequest(posts=posts)),
        lambda: server.classifier.IngestPosts(pb.IngestPostsRequest(posts=posts)),
    ):
        assert _error(call) == (Code.INVALID_ARGUMENT, "posts[2].image")


def test_a_non_finite_model_output_is_invalid_never_nan_under_ok(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    """With the value bound lifted, the output check still catches what the network overflows."""
    install_model(model_registry, tmp_path / "nobound")
    running = start_server(
        tmp_path / "nobound",
        limits=LimitsConfig(max_posts_per_call=512, max_abs_value=float("inf")),
    )
    posts = data.posts(np.arange(4))
    posts[1].text.CopyFrom(pb.Embedding(values=[3e38] * 384))
    request = pb.ClassifyRequest(posts=posts)
    assert _error(lambda: running.classifier.Classify(request)) == (
        Code.INVALID_ARGUMENT,
        "posts[1]",
    )
    running.app.service.writer.sync()
    assert running.app.service.ledger.post_count() == 0  # nothing of the call was pooled


def test_submit_labels_counts_equal_the_rows_stored(server: Running, data: SmallData) -> None:
    server.classifier.Classify(pb.ClassifyRequest(posts=data.posts(np.arange(3))))
    other = data.classes[(data.label[0] + 1) % len(data.classes)]
    labels = [
        _label(data, 0),
        _label(data, 0),  # the same again: a duplicate
        _label(data, 0, label=other),  # a different label, same assessor, same call: rejected
        _label(data, 0, assessor_id=" a1 "),  # the same assessor once trimmed: a duplicate
        _label(data, 1),
        _label(data, 2, assessor_id="a2"),
    ]
    reply = server.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels))
    stored = server.app.service.ledger.labels()
    assert reply.accepted == len(stored) == 3
    assert reply.duplicates == 2
    assert [(r.index, r.field) for r in reply.rejected] == [(2, "labels[2].label")]
    assert reply.accepted + reply.duplicates + len(reply.rejected) == len(labels)
