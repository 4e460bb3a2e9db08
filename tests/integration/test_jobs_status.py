"""A job that did not run says so: ABORTED while a live holder has its lease (CLI exit 3),
UNAVAILABLE once shutdown began; a lease left by a dead process is cleaned up at start."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.cli import EXIT_NOT_RUN, main
from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2 as pb
from store.lease import HOST_ID
from store.ledger import Ledger
from tests.integration.support import Running, SmallData, install_model

JOBS = {
    "train": {"d": 16, "max_epochs": 3, "finetune_max_epochs": 2},
    "query": {"query_size": 10},
    "min_new_labels": 1,
}
LIVE_ELSEWHERE = "otherhost:4242:cafe0001"  # another host: only its lease expiry frees it


def _hold(home: Path, name: str, owner: str = LIVE_ELSEWHERE) -> None:
    with Ledger(home / "ledger.db") as ledger:
        assert ledger.acquire_lock(name, owner, ttl_s=3600)


@pytest.mark.parametrize(
    ("job", "call"),
    [
        ("nightly", lambda r: r.admin.RunNightly(pb.RunNightlyRequest(), timeout=60)),
        ("retrain", lambda r: r.admin.Retrain(pb.RetrainRequest(force=True), timeout=60)),
    ],
)
def test_a_busy_lease_is_aborted_not_ok(
    server: Running, job: str, call: Callable[[Running], object]
) -> None:
    _hold(server.home, job)
    with pytest.raises(grpc.RpcError) as err:
        call(server)
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert LIVE_ELSEWHERE in (err.value.details() or "")


def test_the_client_exits_3_when_the_job_did_not_run(
    server: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    _hold(server.home, "nightly")
    target = f"127.0.0.1:{server.app.port}"
    assert main(["--target", target, "run-nightly"]) == EXIT_NOT_RUN
    assert "did not run" in capsys.readouterr().err
    assert main(["--target", target, "run-nightly", "--dry-run"]) == 0  # dry runs need no lease


def test_start_cleans_up_after_a_dead_nightly(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    home = tmp_path / "dead"
    install_model(model_registry, home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _hold(home, "nightly", f"{HOST_ID}:{dead.pid}:dead0001")
    with Ledger(home / "ledger.db") as ledger:
        run = ledger.start_job("nightly")
    (home / "exports" / ".tmp-q20260101-v0001-dead").mkdir(parents=True)
    running = start_server(home, jobs=JOBS)
    assert not list((home / "exports").glob(".tmp-*"))
    with Ledger(home / "ledger.db") as ledger:
        assert [(r.id, r.status) for r in ledger.job_runs()] == [(run, "abandoned")]
        assert ledger.lock_holder("nightly") is None
    running.classifier.IngestPosts(pb.IngestPostsRequest(posts=data.posts(np.arange(100))))
    night = json.loads(running.admin.RunNightly(pb.RunNightlyRequest(), timeout=60).report_json)
    assert night["status"] == "created"


def test_shutdown_answers_a_running_job_at_once_and_it_never_promotes(
    start_server: Callable[..., Running],
    model_registry: Path,
    tmp_path: Path,
    data: SmallData,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process: the retrain blocks in training until released after stop() returned."""
    import batch_jobs.retrain as retrain_mod

    home = tmp_path / "stop"
    install_model(model_registry, home)
    running = start_server(home, jobs=JOBS)
    idx = np.arange(60)
    running.classifier.IngestPosts(pb.IngestPostsRequest(posts=data.posts(idx)))
    labels = [
        pb.Label(post_id=data.post_ids[i], label=data.classes[data.label[i]], assessor_id="a")
        for i in idx
    ]
    running.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels))
    training, release = threading.Event(), threading.Event()
    real_fold_in = retrain_mod.fold_in

    def slow_fold_in(*args: object, **kwargs: object) -> object:
        training.set()
        release.wait()
        return real_fold_in(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(retrain_mod, "fold_in", slow_fold_in)
    outcome: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            running.admin.Retrain(pb.RetrainRequest(force=True), timeout=60)
            outcome.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            outcome.append(err.code())

    caller = threading.Thread(target=call)
    caller.start()
    assert training.wait(60)
    running.app.stop(grace=5)  # returns without waiting for the blocked job
    caller.join()
    assert outcome == [grpc.StatusCode.UNAVAILABLE]
    with Ledger(home / "ledger.db") as ledger:
        assert ledger.lock_holder("retrain") is None  # freed for the next start
    job = next(t for t in threading.enumerate() if t.name == "job-retrain")
    release.set()  # the job now finishes training and reaches its promotion: refused
    job.join()
    assert ModelRegistry(home / "models").current_version() == "v0001"
