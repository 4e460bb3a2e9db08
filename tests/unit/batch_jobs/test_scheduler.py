"""Scheduler wiring: cron trigger, coalesce, one instance, explicit misfire grace."""

from __future__ import annotations

from datetime import UTC, datetime

from apscheduler.triggers.cron import CronTrigger

from batch_jobs.config import JobConfig, Paths
from batch_jobs.scheduler import JOB_ID, build_scheduler, nightly_job


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


def test_nightly_job_is_a_callable(tmp_path):
    assert callable(nightly_job(Paths(tmp_path), JobConfig()))
