"""Each job's lease (store.lease) with its name, timing and crash cleanup in one place.

`recover_all` is what a server start calls: whatever a killed holder left (a `running` run,
temporary export folders, a lease row) is cleaned up now, not at the next scheduled run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from batch_jobs.config import JobConfig, Paths
from batch_jobs.export import remove_stale_exports
from batch_jobs.stores import open_ledger
from store.lease import Lease, job_lease, recover
from store.ledger import Ledger

log = logging.getLogger(__name__)

NIGHTLY, RETRAIN, BOOTSTRAP = "nightly", "retrain", "bootstrap"
JOBS = (NIGHTLY, RETRAIN, BOOTSTRAP)


def _cleanup_exports(paths: Paths) -> None:
    removed = remove_stale_exports(paths.exports)
    if removed:
        log.warning("event=stale_exports_removed folders=%s", removed)


def _on_acquire(name: str, paths: Paths) -> Callable[[], None] | None:
    """What taking over a job's lease cleans up: a dead nightly's `.tmp-*` export folders."""
    return (lambda: _cleanup_exports(paths)) if name == NIGHTLY else None


def lease_for(
    ledger: Ledger, name: str, paths: Paths, cfg: JobConfig
) -> AbstractContextManager[Lease]:
    """The one way a job takes its lease (JobBusyError while a live holder has it)."""
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}")
    return job_lease(
        ledger, name, cfg.lock_ttl_s, cfg.lock_heartbeat_s, on_acquire=_on_acquire(name, paths)
    )


def recover_all(paths: Paths, cfg: JobConfig) -> dict[str, bool]:
    """Take and release each job's lease once, cleaning up after a dead holder; a job whose
    lease a live holder has is left alone (False)."""
    ledger = open_ledger(paths, cfg)
    try:
        return {name: recover(ledger, name, on_acquire=_on_acquire(name, paths)) for name in JOBS}
    finally:
        ledger.close()
