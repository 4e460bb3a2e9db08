"""kill -9 at each point that matters, then a restart: nothing acknowledged is missing, the
next start reaches SERVING and the next job succeeds, with no manual step."""

from __future__ import annotations

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


def test_kill9_during_labels_loses_no_acknowledged_label(make_server: Make, data: SmallData):
    server = make_server().start()
    server.wait_serving()
    ingest(server, data, np.arange(200))
    load = LabelLoad(server, data)
    thread = load.run(enough_after=20)
    assert load.enough.wait(120)
    assert server.kill9() == -9
    thread.join()
    acked = set(load.acked)
    assert len(acked) >= 100
    server.start()
    server.wait_serving()
    assert acked <= stored_labels(server.home)  # stored ⊇ acknowledged (+ maybe one unacked)
    run_nightly(server)


def test_kill9_during_nightly_export_heals_on_restart(make_server: Make, data: SmallData):
    server = make_server(POSTCLF_FAULT_POINTS="export.write=kill").start()
    server.wait_serving()
    ingest(server, data, np.arange(200))
    with server.channel() as channel:
        _, admin = server.stubs(channel)
        code = call_code(lambda: admin.RunNightly(pb.RunNightlyRequest(), timeout=60))
    assert code == grpc.StatusCode.UNAVAILABLE  # the process died under the call
    assert server.wait_exit() == -9
    assert temp_exports(server.home)  # a torn export folder ...
    assert job_runs(server.home) == [("nightly", "running")]  # ... a run stuck 'running' ...
    assert lease_holder(server.home, "nightly") is not None  # ... and a lease: all healed below
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    assert temp_exports(server.home) == []
    assert lease_holder(server.home, "nightly") is None
    assert job_runs(server.home) == [("nightly", "abandoned")]
    report = run_nightly(server)
    assert report["status"] == "existing"  # the query recorded before the crash, now exported
    assert job_runs(server.home) == [("nightly", "abandoned"), ("nightly", "ok")]


def test_kill9_during_retrain_before_promotion_heals_on_restart(make_server: Make, data: SmallData):
    server = make_server(POSTCLF_FAULT_POINTS="retrain.before_promote=kill").start()
    server.wait_serving()
    ingest(server, data, np.arange(200))
    with server.channel() as channel:
        classifier, admin = server.stubs(channel)
        classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels(data, np.arange(80), "a")))
        code = call_code(lambda: admin.Retrain(pb.RetrainRequest(force=True), timeout=60))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert server.wait_exit() == -9
    assert lease_holder(server.home, "retrain") is not None
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    assert ModelRegistry(server.home / "models").current_version() == "v0001"
    assert len(stored_labels(server.home)) == 80
    report = retrain(server)  # at once: the dead holder's lease was taken over
    assert report["parent"] == "v0001"
    run_nightly(server)


def test_kill9_during_retrain_training_heals_on_restart(make_server: Make, data: SmallData):
    server = make_server(POSTCLF_FAULT_POINTS="retrain.train=kill").start()
    server.wait_serving()
    ingest(server, data, np.arange(200))
    with server.channel() as channel:
        classifier, _ = server.stubs(channel)
        classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels(data, np.arange(80), "a")))
    with server.channel() as channel:  # the nightly's own retrain is what dies here
        _, admin = server.stubs(channel)
        report_code = call_code(lambda: admin.RunNightly(pb.RunNightlyRequest(), timeout=60))
    assert report_code == grpc.StatusCode.UNAVAILABLE
    assert server.wait_exit() == -9
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()
    assert job_runs(server.home) == [("nightly", "abandoned")]
    report = run_nightly(server)
    assert report["retrain"]["status"] in ("promoted", "rejected"), report["retrain"]


def test_kill9_during_bootstrap_retries_it_on_restart(make_server: Make, data: SmallData):
    server = make_server(
        with_model=False, POSTCLF_BOOTSTRAP="1", POSTCLF_FAULT_POINTS="bootstrap.train=kill"
    ).start()
    assert server.wait_exit() == -9  # killed itself half-way: seeded, not trained
    assert ModelRegistry(server.home / "models").current_version() is None
    assert lease_holder(server.home, "bootstrap") is not None
    server.start(POSTCLF_FAULT_POINTS="")
    server.wait_serving()  # the interrupted bootstrap was retried
    with Ledger(server.home / "ledger.db") as ledger:
        assert [m.status for m in ledger.list_models()] == ["promoted"]
    ingest(server, data, np.arange(600, 800))
    run_nightly(server)


def test_kill9_after_ingest_loses_no_acknowledged_post(make_server: Make, data: SmallData):
    server = make_server().start()
    server.wait_serving()
    ingest(server, data, np.arange(300))  # acknowledged
    assert server.kill9() == -9
    server.start()
    server.wait_serving()
    from store.pool import Pool

    want = data.post_ids[:300].tolist()
    pooled, _ = Pool(server.home / "pool").get(want)
    with Ledger(server.home / "ledger.db") as ledger:
        known = ledger.known_posts(want)
    assert known.all()
    assert set(want) <= set(pooled.tolist())
