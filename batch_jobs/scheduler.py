"""Scheduler wiring only: a cron trigger for a job; the ledger lock stops replicas doubling up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from batch_jobs.config import JobConfig, Paths

JOB_ID = "nightly"


def build_scheduler(
    job: Callable[[], Any],
    cron: str,
    timezone: str = "UTC",
    misfire_grace_time: int = 3600,
) -> BackgroundScheduler:
    """A not-yet-started scheduler running `job` on the crontab `cron` ("30 2 * * *").

    coalesce: several missed runs become one; max_instances=1: never overlaps itself;
    misfire_grace_time: a run late by less than this (s) still happens, a later one is skipped.
    """
    scheduler = BackgroundScheduler(timezone=timezone)
    scheduler.add_job(
        job,
        CronTrigger.from_crontab(cron, timezone=timezone),
        id=JOB_ID,
        name=JOB_ID,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=misfire_grace_time,
        replace_existing=True,
    )
    return scheduler


def nightly_job(paths: Paths, cfg: JobConfig) -> Callable[[], Any]:
    """The callable the scheduler runs: the nightly job for today (UTC)."""

    def run() -> Any:
        from batch_jobs.nightly import run_nightly

        return run_nightly(paths, cfg)

    return run
