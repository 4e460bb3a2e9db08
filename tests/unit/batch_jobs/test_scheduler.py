"""Scheduler wiring: cron trigger, coalesce, one instance, explicit misfire grace."""

from __future__ import annotations

from datetime import UTC, datetime

from apscheduler.triggers.cron import CronTrigger

from batch_jobs.scheduler import JOB_ID, build_scheduler, nightly_job
from store.ledger import Ledger


def test_trigger_settings():
    calls = []
    sched = build_scheduler(lambda: calls.append(1), "30 2 * * *", misfire_grace_time=900)
    (job,) = sched.get_jobs()
    assert job.id == JOB_ID
    assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 900)
    assert isinstance(job.trigger, CronTrigger)
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["hour"], fields["minute"]) == ("2", "30")
    nxt = job.trigger.get_next_fire_time(None, datetime(2026, 1, 1, 3, 0, tzinfo=UTC))
    assert nxt == datetime(2026, 1, 2, 2, 30, tzinfo=UTC)
    assert not sched.running and calls == []


def test_nightly_job_runs_the_nightly_on_its_home(paths, job_cfg):
    report = nightly_job(paths, job_cfg)()  # what the scheduler calls at the cron time
    assert report.status == "created" and len(report.post_ids) == job_cfg.query.query_size
    with Ledger(paths.ledger) as ledger:
        (run,) = [r for r in ledger.job_runs() if r.job == "nightly"]
        assert run.status == "ok"
