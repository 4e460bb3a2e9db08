"""SIGTERM at each point that matters: calls stop, jobs are cancelled (never promote after
shutdown began), the process exits on its own within the grace period + 5 s even with a job
far slower than that, and the restart's next run succeeds."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2 as pb
from store.ledger import Ledger
from tests.integration.faults.helpers import (
    LabelLoad,
    call_code,
    ingest,
    job_runs,
    labels,
    lease_holder,
    retrain,
    run_nightly,
    stored_labels,
    temp_exports,
)
from tests.integration.faults.procs import ServerProcess
from tests.integration.support import SmallData

pytestmark = pytest.mark.slow  # `make test-fast` (-m 'not slow') leaves it out

Make = Callable[..., ServerProcess]
GRACE_S = 2.0  # POSTCLF_GRACE_S in procs.py


def _with_labels(server: ServerProcess, data: SmallData) -> None:
    ingest(server, data, np.arange(200))
    with server.channel() as channel:
        classifier, _ = server.stubs(channel)
        classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels(data, np.arange(80), "a")))


def test_sigterm_during_labels_keeps_every_acknowledged_label(make_server: Make, data: SmallData):
    server = make_server().start()
    server.wait_serving()
    ingest(server, data, np.arange(200))
    load = LabelLoad(server, data)
    thread = load.run(enough_after=20)
    assert load.enough.wait(120)
    server.term()
    assert server.wait_exit() == 0
    thread.join()
    assert load.error in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    server.start()
    server.wait_serving()
    assert load.acked <= stored_labels(server.home)
    run_nightly(server)


def test_sigterm_during_retrain_never_promotes(make_server: Make, data: SmallData):
    """Shutdown begins exactly before the promotion: the retrain must stop there."""
    server = make_server(POSTCLF_FAULT_POINTS="retrain.before_promote=term").start()
    server.wait_serving()
    _with_labels(server, data)
    with server.channel() as channel:
        _, admin = server.stubs(channel)
        code = call_code(lambda: admin.Retrain(pb.RetrainRequest(force=True), timeout=60))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert server.wait_exit() == 0
    assert ModelRegistry(server.home / "models").current_version() == "v0001"
    with Ledger(server.home / "ledger.db") as ledger:
        assert [m.version for m in ledger.list_models() if m.status == "promoted"] == []
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    assert retrain(server)["parent"] == "v0001"
    run_nightly(server)


def test_sigterm_with_a_job_slower_than_the_grace_period_still_exits(
    make_server: Make, data: SmallData
):
    """The retrain hangs in training (as a long one would): the process exits regardless,
    its caller is told UNAVAILABLE, and the lease is free for the restart."""
    server = make_server(POSTCLF_FAULT_POINTS="retrain.train=hang").start()
    server.wait_serving()
    _with_labels(server, data)
    outcome: list[grpc.StatusCode] = []
    with server.channel() as channel:
        _, admin = server.stubs(channel)
        future = admin.Retrain.future(pb.RetrainRequest(force=True), timeout=120)
        server.wait_log("event=fault_point name=retrain.train action=hang")
        t0 = time.monotonic()
        server.term()
        code = server.wait_exit()
        exit_s = time.monotonic() - t0
        outcome.append(call_code(future.result))
    print(f"exit after SIGTERM with a hung retrain: {exit_s:.2f} s (grace {GRACE_S} s)")
    assert code == 0
    assert outcome == [grpc.StatusCode.UNAVAILABLE]
    assert "event=jobs_cancelled" in server.log_text()
    assert lease_holder(server.home, "retrain") is None
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    assert retrain(server)["parent"] == "v0001"


def test_sigterm_during_nightly_export_heals_on_restart(make_server: Make, data: SmallData):
    server = make_server(POSTCLF_FAULT_POINTS="export.write=term").start()
    server.wait_serving()
    ingest(server, data, np.arange(200))
    with server.channel() as channel:
        _, admin = server.stubs(channel)
        code = call_code(lambda: admin.RunNightly(pb.RunNightlyRequest(), timeout=60))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert server.wait_exit() == 0
    assert lease_holder(server.home, "nightly") is None
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    assert temp_exports(server.home) == []
    run_nightly(server)
    assert job_runs(server.home)[-1] == ("nightly", "ok")
    assert all(status != "running" for _job, status in job_runs(server.home))


def test_sigterm_during_bootstrap_never_promotes_and_restart_retries(
    make_server: Make, data: SmallData
):
    server = make_server(
        with_model=False, POSTCLF_BOOTSTRAP="1", POSTCLF_FAULT_POINTS="bootstrap.train=term"
    ).start()
    assert server.wait_exit() == 0  # Ctrl-C / SIGTERM during the first start's bootstrap
    assert ModelRegistry(server.home / "models").current_version() is None
    assert lease_holder(server.home, "bootstrap") is None
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    ingest(server, data, np.arange(600, 800))
    run_nightly(server)
