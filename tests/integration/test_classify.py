"""Classify, GetModelInfo and IngestPosts against a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model.classifier import Classifier
from model.data import Views
from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2 as pb
from server.config import MAX_QUIET_TICKS, BatcherConfig
from store.pool import Pool
from tests.integration.support import Running, SmallData, hold_first_predict, install_model

HEADS = {"fused", "image", "text"}


def _check_prediction(p: pb.Prediction, classes: list[str]) -> None:
    assert p.model_version == "v0001"
    assert p.head in HEADS
    assert p.label == classes[p.label_id]
    probs = [s.probability for s in p.top]
    assert len(probs) == 3
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1.0 + 1e-5
    assert p.top[0].label == p.label
    assert abs(p.confidence - probs[0]) < 1e-7


def test_classify_single(server: Running, data: SmallData) -> None:
    reply = server.classifier.Classify(pb.ClassifyRequest(posts=data.posts(slice(0, 1))))
    assert [p.post_id for p in reply.predictions] == [data.post_ids[0]]
    _check_prediction(reply.predictions[0], data.classes)


def test_classify_batch_keeps_order_and_matches_model(
    server: Running, data: SmallData, served_model: Classifier
) -> None:
    idx = np.arange(100, 164)[::-1]
    reply = server.classifier.Classify(pb.ClassifyRequest(posts=data.posts(idx), top_k=5))
    assert [p.post_id for p in reply.predictions] == data.post_ids[idx].tolist()
    assert {p.model_version for p in reply.predictions} == {"v0001"}
    expected = served_model.predict(Views.from_nan_rows(data.image[idx], data.text[idx]))
    assert [p.label_id for p in reply.predictions] == expected.probs.argmax(1).tolist()
    assert [p.head for p in reply.predictions] == expected.head.tolist()
    got = np.array([p.confidence for p in reply.predictions])
    np.testing.assert_allclose(got, expected.probs.max(1), rtol=1e-5)
    assert all(len(p.top) == 5 for p in reply.predictions)


def test_bytes_and_repeated_float_agree(server: Running, data: SmallData) -> None:
    idx = np.arange(10)
    as_bytes = server.classifier.Classify(pb.ClassifyRequest(posts=data.posts(idx, as_bytes=True)))
    as_values = server.classifier.Classify(
        pb.ClassifyRequest(posts=data.posts(idx, as_bytes=False))
    )
    assert as_bytes == as_values


def test_single_view_posts_use_their_head(server: Running, data: SmallData) -> None:
    image_only = pb.Post(post_id="img-only", image=data.posts(slice(0, 1))[0].text)
    text_only = pb.Post(post_id="txt-only", text=data.posts(slice(0, 1))[0].text)
    reply = server.classifier.Classify(pb.ClassifyRequest(posts=[image_only, text_only]))
    assert [p.head for p in reply.predictions] == ["image", "text"]


def test_model_info(server: Running, data: SmallData, model_registry: Path) -> None:
    info = server.classifier.GetModelInfo(pb.GetModelInfoRequest())
    assert info.version == info.serving_version == "v0001"
    assert list(info.classes) == data.classes
    assert (info.image_dim, info.text_dim) == (384, 384)
    recorded = ModelRegistry(model_registry).info("v0001").meta["metrics"]  # the gate's
    assert recorded and dict(info.metrics) == pytest.approx(recorded)


def test_ingest_posts_then_retry_counts_duplicates(server: Running, data: SmallData) -> None:
    posts = data.posts(np.arange(200, 250))
    first = server.classifier.IngestPosts(pb.IngestPostsRequest(posts=posts))
    again = server.classifier.IngestPosts(pb.IngestPostsRequest(posts=posts))
    assert (first.accepted, first.duplicates) == (50, 0)
    assert (again.accepted, again.duplicates) == (0, 50)
    assert server.app.service.ledger.post_count() == 50


def test_ingested_posts_are_on_disk_when_the_call_returns(server: Running, data: SmallData) -> None:
    """Acknowledged means durable: another process's view of the pool already has them, and
    concurrent calls (one group commit) each get their own count."""
    calls = [data.posts(np.arange(300 + 20 * k, 320 + 20 * k)) for k in range(4)]
    replies: list[pb.IngestPostsResponse] = []
    threads = [
        threading.Thread(
            target=lambda p=p: replies.append(
                server.classifier.IngestPosts(pb.IngestPostsRequest(posts=p), timeout=30)
            )
        )
        for p in calls
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((r.accepted, r.duplicates) for r in replies) == [(20, 0)] * 4
    other = Pool(server.home / "pool")  # as a restarted process would open it
    want = data.post_ids[300:380].tolist()
    assert sorted(other.get(want)[0].tolist()) == sorted(want)


@pytest.fixture
def patient_server(
    tmp_path: Path, model_registry: Path, start_server: Callable[..., Running]
) -> Running:
    """Batches close on max_delay_ms (0.5 s) alone: gRPC accepts queued calls one at a time,
    and in a test process its client threads share the machine with those accepts."""
    home = tmp_path / "home"
    install_model(model_registry, home)
    batcher = BatcherConfig(max_batch=256, max_delay_ms=500.0, quiet_ticks=MAX_QUIET_TICKS)
    return start_server(home, batcher=batcher)


def test_concurrent_calls_share_one_forward_pass(
    patient_server: Running, data: SmallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = patient_server
    entered, release = hold_first_predict(monkeypatch, server.app.holder.require())
    requests = [data.posts(np.arange(10 * k, 10 * k + 3 + k)) for k in range(5)]
    replies: dict[int, pb.ClassifyResponse] = {}

    def call(k: int) -> None:
        replies[k] = server.classifier.Classify(pb.ClassifyRequest(posts=requests[k]), timeout=10)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert entered.wait(10)  # call 0 is being computed, on the event loop
    others = [threading.Thread(target=call, args=(k,)) for k in range(1, 5)]
    for t in others:
        t.start()
    time.sleep(1.0)  # calls 1-4 reach the server meanwhile; the loop takes them all at once
    release.set()
    for t in [first, *others]:
        t.join()
    for k, posts in enumerate(requests):
        assert [p.post_id for p in replies[k].predictions] == [p.post_id for p in posts]
    sample = server.app.service.metrics.registry.get_sample_value
    # two forward passes: [call 0], then calls 1-4 merged
    assert sample("postclf_batch_calls_count") == 2
    assert sample("postclf_batch_calls_sum") == 5


def test_the_standard_asyncio_loop_serves_too(
    tmp_path: Path, model_registry: Path, start_server: Callable[..., Running], data: SmallData
) -> None:
    """`event_loop = "asyncio"` (uvloop is the default every other test runs on)."""
    home = tmp_path / "home"
    install_model(model_registry, home)
    server = start_server(home, event_loop="asyncio")
    assert type(server.app.loop.loop).__module__.startswith("asyncio")
    reply = server.classifier.Classify(
        pb.ClassifyRequest(posts=data.posts(np.arange(4))), timeout=10
    )
    assert [p.post_id for p in reply.predictions] == data.post_ids[:4].tolist()
