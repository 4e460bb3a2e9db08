"""Every validation error and limit leaves as the right status code, naming the field."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from postclf.v1 import postclf_pb2 as pb
from tests.integration.support import Running, SmallData, hold_first_predict

Code = grpc.StatusCode


def _f32(values: np.ndarray) -> pb.Embedding:
    return pb.Embedding(f32le=np.asarray(values, "<f4").tobytes())


def _call_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def _field(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ()).get("postclf-field", "")


def _posts(data: SmallData, n: int = 5) -> list[pb.Post]:
    return data.posts(np.arange(n))


def _wrong_dim(posts: list[pb.Post]) -> None:
    posts[3].image.CopyFrom(_f32(np.ones(10)))


def _nan(posts: list[pb.Post]) -> None:
    posts[2].image.CopyFrom(_f32(np.full(384, np.nan)))


def _inf_values(posts: list[pb.Post]) -> None:
    posts[4].text.CopyFrom(pb.Embedding(values=[float("inf")] * 384))


def _no_embedding(posts: list[pb.Post]) -> None:
    posts[1].ClearField("image")
    posts[1].ClearField("text")


def _duplicate_id(posts: list[pb.Post]) -> None:
    posts[2].post_id = posts[0].post_id


def _empty_id(posts: list[pb.Post]) -> None:
    posts[3].post_id = ""


def _both_encodings(posts: list[pb.Post]) -> None:
    posts[0].text.values.extend([0.0] * 384)


def _empty_embedding(posts: list[pb.Post]) -> None:
    posts[2].text.CopyFrom(pb.Embedding())


def _wrong_byte_count(posts: list[pb.Post]) -> None:
    posts[1].text.f32le = b"\x00" * 7


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_wrong_dim, "posts[3].image"),
        (_nan, "posts[2].image"),
        (_inf_values, "posts[4].text"),
        (_no_embedding, "posts[1]"),
        (_duplicate_id, "posts[2].post_id"),
        (_empty_id, "posts[3].post_id"),
        (_both_encodings, "posts[0].text"),
        (_empty_embedding, "posts[2].text"),
        (_wrong_byte_count, "posts[1].text"),
    ],
)
def test_classify_invalid_argument_names_the_field(
    server: Running, data: SmallData, mutate: Callable[[list[pb.Post]], None], field: str
) -> None:
    posts = _posts(data)
    if mutate is _nan:  # make sure the post under test has an image to corrupt
        assert posts[2].HasField("text")
    mutate(posts)
    err = _call_error(lambda: server.classifier.Classify(pb.ClassifyRequest(posts=posts)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert _field(err) == field
    assert err.details().startswith(field + ":")


def test_empty_batch(server: Running) -> None:
    err = _call_error(lambda: server.classifier.Classify(pb.ClassifyRequest()))
    assert (err.code(), _field(err)) == (Code.INVALID_ARGUMENT, "posts")


def test_ingest_validates_like_classify(server: Running, data: SmallData) -> None:
    posts = _posts(data)
    _wrong_dim(posts)
    err = _call_error(lambda: server.classifier.IngestPosts(pb.IngestPostsRequest(posts=posts)))
    assert (err.code(), _field(err)) == (Code.INVALID_ARGUMENT, "posts[3].image")


def test_too_many_posts_per_call(server: Running, data: SmallData) -> None:
    limit = server.app.cfg.limits.max_posts_per_call
    posts = [
        pb.Post(post_id=f"p{i}", text=data.posts(slice(0, 1))[0].text) for i in range(limit + 1)
    ]
    err = _call_error(lambda: server.classifier.Classify(pb.ClassifyRequest(posts=posts)))
    assert err.code() == Code.RESOURCE_EXHAUSTED


def test_message_larger_than_the_limit(server: Running) -> None:
    big = pb.Embedding(f32le=b"\x00" * (server.app.cfg.limits.max_message_bytes + 1))
    err = _call_error(
        lambda: server.classifier.Classify(
            pb.ClassifyRequest(posts=[pb.Post(post_id="x", text=big)])
        )
    )
    assert err.code() == Code.RESOURCE_EXHAUSTED


def test_too_many_labels_per_call(server: Running) -> None:
    limit = server.app.cfg.limits.max_labels_per_call
    labels = [pb.Label(post_id=f"p{i}", label="x", assessor_id="a") for i in range(limit + 1)]
    err = _call_error(lambda: server.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels)))
    assert err.code() == Code.RESOURCE_EXHAUSTED


def test_empty_label_list(server: Running) -> None:
    err = _call_error(lambda: server.classifier.SubmitLabels(pb.SubmitLabelsRequest()))
    assert (err.code(), _field(err)) == (Code.INVALID_ARGUMENT, "labels")


def test_bad_labels_are_rejected_per_item(server: Running, data: SmallData) -> None:
    server.classifier.Classify(pb.ClassifyRequest(posts=_posts(data, 2)))
    ids = data.post_ids[:2].tolist()
    labels = [
        pb.Label(post_id=ids[0], label="no-such-class", assessor_id="a1"),
        pb.Label(post_id="never-seen", label=data.classes[0], assessor_id="a1"),
        pb.Label(post_id=ids[1], label=data.classes[1], assessor_id="a1"),
    ]
    reply = server.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels))
    assert reply.accepted == 1
    assert [(r.index, r.field) for r in reply.rejected] == [
        (0, "labels[0].label"),
        (1, "labels[1].post_id"),
    ]
    assert "no-such-class" in reply.rejected[0].reason


def test_unknown_model_version(server: Running) -> None:
    err = _call_error(
        lambda: server.classifier.GetModelInfo(pb.GetModelInfoRequest(version="v9999"))
    )
    assert err.code() == Code.NOT_FOUND


def test_unavailable_before_a_model_exists(
    start_server: Callable[..., Running], data: SmallData
) -> None:
    empty = start_server()
    for call in (
        lambda: empty.classifier.Classify(pb.ClassifyRequest(posts=_posts(data))),
        lambda: empty.classifier.GetModelInfo(pb.GetModelInfoRequest()),
        lambda: empty.classifier.SubmitLabels(
            pb.SubmitLabelsRequest(labels=[pb.Label(post_id="a", label="b", assessor_id="c")])
        ),
    ):
        assert _call_error(call).code() == Code.UNAVAILABLE


def test_deadline_passed_while_queued_is_not_computed(
    server: Running, data: SmallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server is busy computing the first call until the late call has expired. gRPC
    # itself drops a call that expired before its handler ran; the batcher drops one that
    # expired while gathered (unit-tested in tests/unit/server/test_batcher.py).
    entered, release = hold_first_predict(monkeypatch, server.app.holder.require())
    first = pb.ClassifyRequest(posts=_posts(data, 3))
    busy = threading.Thread(target=lambda: server.classifier.Classify(first, timeout=10))
    busy.start()
    assert entered.wait(10)  # the first call is being computed
    late = pb.ClassifyRequest(posts=_posts(data, 5))
    err = _call_error(lambda: server.classifier.Classify(late, timeout=0.1))
    release.set()
    busy.join()
    assert err.code() == Code.DEADLINE_EXCEEDED
    after = pb.ClassifyRequest(posts=_posts(data, 2))
    server.classifier.Classify(after, timeout=10)  # served after anything left of the late call
    sample = server.app.service.metrics.registry.get_sample_value
    assert sample("postclf_batch_posts_sum") == 3 + 2  # the late call was never computed
