"""Health, reflection, metrics, labels across retries and restarts, hot swap, graceful shutdown."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from model.classifier import Classifier
from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2 as pb
from store.ledger import Ledger
from store.pool import Pool
from tests.integration.support import Running, SmallData, install_model

Status = health_pb2.HealthCheckResponse


def _health(running: Running, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(running.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_health_turns_serving_when_a_model_is_promoted(
    start_server: Callable[..., Running], served_model: Classifier, data: SmallData
) -> None:
    running = start_server()
    assert _health(running) == Status.NOT_SERVING
    assert _health(running, "postclf.v1.PostClassifier") == Status.NOT_SERVING
    registry = ModelRegistry(running.home / "models")
    registry.promote(registry.save(served_model))
    _wait_for(lambda: _health(running, "postclf.v1.PostClassifier") == Status.SERVING)
    reply = running.classifier.Classify(pb.ClassifyRequest(posts=data.posts(slice(0, 2))))
    assert len(reply.predictions) == 2


def test_reflection_lists_the_services(server: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in response.list_services_response.service}
    assert {"postclf.v1.PostClassifier", "postclf.v1.Admin", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    install_model(model_registry, tmp_path / "m")
    running = start_server(tmp_path / "m", metrics_port=0)
    running.classifier.Classify(pb.ClassifyRequest(posts=data.posts(slice(0, 3))))
    with pytest.raises(grpc.RpcError):
        running.classifier.Classify(pb.ClassifyRequest())
    url = f"http://127.0.0.1:{running.app.metrics_port}/metrics"
    want = [
        'postclf_requests_total{code="OK",method="Classify"} 1.0',
        'postclf_requests_total{code="INVALID_ARGUMENT",method="Classify"} 1.0',
        'postclf_model_info{version="v0001"} 1.0',
        "postclf_batch_posts_count 1.0",
    ]
    # gRPC's asyncio server sends an aborted call's status before the interceptor's `finally`
    # counts it, so under load the client can scrape first: wait (bounded) for the counters.
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        missing = [line for line in want if line not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert missing == []


def _labels(data: SmallData, idx: np.ndarray, assessor: str = "a1") -> list[pb.Label]:
    return [
        pb.Label(post_id=data.post_ids[i], label=data.classes[data.label[i]], assessor_id=assessor)
        for i in idx
    ]


def test_labels_are_stored_once_under_retries(server: Running, data: SmallData) -> None:
    idx = np.arange(20)
    server.classifier.Classify(pb.ClassifyRequest(posts=data.posts(idx)))
    request = pb.SubmitLabelsRequest(labels=_labels(data, idx))
    first = server.classifier.SubmitLabels(request)
    retry = server.classifier.SubmitLabels(request)
    assert (first.accepted, first.duplicates, len(first.rejected)) == (20, 0, 0)
    assert (retry.accepted, retry.duplicates, len(retry.rejected)) == (0, 20, 0)


def test_restart_keeps_every_accepted_label(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    home = tmp_path / "restart"
    install_model(model_registry, home)
    idx = np.arange(30, 60)
    first = start_server(home)
    first.classifier.Classify(pb.ClassifyRequest(posts=data.posts(idx)))
    accepted = first.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=_labels(data, idx)))
    assert accepted.accepted == 30
    first.app.stop(grace=1)
    second = start_server(home)
    again = second.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=_labels(data, idx)))
    assert (again.accepted, again.duplicates) == (0, 30)
    assert len(second.app.service.ledger.labels()) == 30


def test_graceful_shutdown_flushes_the_pool(server: Running, data: SmallData) -> None:
    ids = []
    for start in range(0, 300, 50):
        idx = np.arange(start, start + 50)
        server.classifier.Classify(pb.ClassifyRequest(posts=data.posts(idx)))
        ids.extend(data.post_ids[idx])
    skipped = data.posts(np.arange(400, 410))
    server.classifier.Classify(pb.ClassifyRequest(posts=skipped, skip_pool=True))
    server.app.stop(grace=2)
    pool = Pool(server.home / "pool")
    refs = pool.chunks(pool.segments(), 1000)
    pooled = [p for r in refs for p in pool.ids(r.segment, np.arange(r.start, r.stop))]
    assert sorted(pooled) == sorted(ids)
    assert sum(len(pool.load(r).views) for r in refs) == 300
    with Ledger(server.home / "ledger.db") as ledger:
        assert ledger.post_count() == 300


def test_hot_swap_under_load_drops_no_call(
    server: Running, data: SmallData, served_model: Classifier
) -> None:
    stop = threading.Event()
    versions: list[set[str]] = []
    failures: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            idx = rng.choice(len(data.post_ids), size=int(rng.integers(1, 40)), replace=False)
            try:
                reply = server.classifier.Classify(
                    pb.ClassifyRequest(posts=data.posts(idx), skip_pool=True), timeout=10
                )
                versions.append({p.model_version for p in reply.predictions})
            except Exception as exc:  # collected and asserted on below
                failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    registry = ModelRegistry(server.home / "models")
    new = registry.save(served_model, parent="v0001")
    registry.promote(new)
    try:
        _wait_for(lambda: any(new in v for v in versions[-20:]))
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert all(len(v) == 1 for v in versions)
    assert {"v0001", new} == set().union(*versions)
