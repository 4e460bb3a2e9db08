"""Job leases: busy vs. taken over, dead-holder cleanup, heartbeat, loss, shutdown scope."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from batch_jobs.config import JobConfig, Paths
from batch_jobs.export import remove_stale_exports
from batch_jobs.leases import recover_all
from postclf_errors import JobBusyError, JobCancelledError, LeaseLostError
from store.lease import HOST_ID, JobScope, job_lease, owner_is_gone
from store.ledger import Ledger

HOST = HOST_ID


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.db") as led:
        yield led


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is gone
    return proc.pid


def _wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_lease_is_exclusive_and_released(ledger):
    with job_lease(ledger, "nightly") as lease:
        assert ledger.lock_holder("nightly")[0] == lease.owner
        with pytest.raises(JobBusyError, match=lease.owner) as err, job_lease(ledger, "nightly"):
            pass
        assert err.value.job == "nightly"
    assert ledger.lock_holder("nightly") is None
    with job_lease(ledger, "nightly"):  # free again
        pass


def test_a_dead_holder_on_this_host_is_taken_over_and_its_run_abandoned(ledger):
    dead = f"{HOST}:{_dead_pid()}:abcd1234"
    assert ledger.acquire_lock("nightly", dead, ttl_s=3600)
    stale = ledger.start_job("nightly")
    other = ledger.start_job("retrain")
    assert owner_is_gone(dead)
    with job_lease(ledger, "nightly") as lease:
        assert ledger.lock_holder("nightly")[0] == lease.owner
    runs = {r.id: r.status for r in ledger.job_runs()}
    assert runs == {stale: "abandoned", other: "running"}


def test_a_holder_elsewhere_is_waited_for_until_its_lease_expires(ledger):
    assert ledger.acquire_lock("retrain", "otherhost:1:abcd1234", ttl_s=3600)
    assert not owner_is_gone("otherhost:1:abcd1234")
    with pytest.raises(JobBusyError), job_lease(ledger, "retrain"):
        pass
    assert ledger.acquire_lock("retrain", "otherhost:1:abcd1234", ttl_s=-1)  # expired now
    with job_lease(ledger, "retrain"):
        pass


def test_same_hostname_in_another_pid_namespace_is_not_judged_by_pid():
    import socket

    assert not owner_is_gone(f"{socket.gethostname()}~1:{_dead_pid()}:abcd1234")


def test_this_pid_with_a_lease_it_does_not_hold_is_a_previous_incarnation(ledger):
    import os

    assert owner_is_gone(f"{HOST}:{os.getpid()}:00000000")
    assert not owner_is_gone(f"{HOST}:{os.getpid()}")  # unparsable: never
    with job_lease(ledger, "bootstrap") as lease:
        assert not owner_is_gone(lease.owner)


def test_heartbeat_renews_the_lease(ledger):
    with job_lease(ledger, "nightly", ttl_s=5.0, heartbeat_s=0.02):
        first = ledger.lock_holder("nightly")[1]
        _wait_for(lambda: ledger.lock_holder("nightly")[1] > first)


def test_a_lost_lease_refuses_to_commit(ledger):
    with job_lease(ledger, "retrain", ttl_s=30, heartbeat_s=10) as lease:
        lease.ensure_held()
        assert ledger.release_lock("retrain", lease.owner)  # as if taken over after a stall
        assert ledger.acquire_lock("retrain", "otherhost:2:x", ttl_s=30)
        with pytest.raises(LeaseLostError), lease.guard():
            pytest.fail("the guarded commit ran without the lease")
    assert ledger.lock_holder("retrain")[0] == "otherhost:2:x"  # release left theirs alone


def test_scope_close_cancels_running_jobs_and_refuses_new_ones(ledger):
    scope = JobScope()
    with scope.active(), job_lease(ledger, "retrain") as lease:
        run = ledger.start_job("retrain")
        assert scope.running() == ["retrain"]
        scope.close()
        with pytest.raises(JobCancelledError), lease.guard():
            pytest.fail("promoted after shutdown began")
        with pytest.raises(JobCancelledError), job_lease(ledger, "nightly"):
            pass
        assert scope.abandon() == ["retrain"]
        assert ledger.lock_holder("retrain") is None  # freed for the next start
        assert ledger.job_runs()[0].id == run
        assert ledger.job_runs()[0].status == "cancelled"


def test_stale_export_folders_are_removed_and_finished_ones_kept(tmp_path):
    exports = tmp_path / "exports"
    (exports / ".tmp-q1-dead").mkdir(parents=True)
    (exports / ".tmp-q1-dead" / "query.csv").write_text("x")
    (exports / "q0").mkdir()
    assert remove_stale_exports(exports) == [".tmp-q1-dead"]
    assert sorted(p.name for p in exports.iterdir()) == ["q0"]
    assert remove_stale_exports(tmp_path / "none") == []


def test_recover_all_cleans_up_after_a_dead_holder_only(tmp_path):
    paths, cfg = Paths(tmp_path), JobConfig()
    (paths.exports / ".tmp-q-dead").mkdir(parents=True)
    with Ledger(paths.ledger) as ledger:
        ledger.acquire_lock("nightly", f"{HOST}:{_dead_pid()}:x1", ttl_s=3600)
        ledger.acquire_lock("retrain", "otherhost:7:x2", ttl_s=3600)
        nightly, retrain = ledger.start_job("nightly"), ledger.start_job("retrain")
    assert recover_all(paths, cfg) == {"nightly": True, "retrain": False, "bootstrap": True}
    assert not (paths.exports / ".tmp-q-dead").exists()
    with Ledger(paths.ledger) as ledger:
        runs = {r.id: r.status for r in ledger.job_runs()}
        assert runs == {nightly: "abandoned", retrain: "running"}
        assert ledger.lock_holder("nightly") is None


def test_heartbeat_must_be_shorter_than_the_ttl(ledger):
    with pytest.raises(ValueError), job_lease(ledger, "x", ttl_s=1, heartbeat_s=1):
        pass
