"""Each job's lease (store.lease) with its name, timing and crash cleanup in one place.

`recover_all` is what a server start calls: whatever a killed holder left (a `running` run,
temporary export folders, a lease row) is cleaned up now, not at the next scheduled run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from batch_jobs.config import JobConfig, Paths
from batch_jobs.export import remove_stale_exports
from store.lease import Lease, job_lease, recover
from store.ledger import Ledger

log = logging.getLogger(__name__)

NIGHTLY, RETRAIN, BOOTSTRAP = "nightly", "retrain", "bootstrap"
JOBS = (NIGHTLY, RETRAIN, BOOTSTRAP)


def _cleanup_exports(paths: Paths) -> None:
    removed = remove_stale_exports(paths.exports)
    if removed:
        log.warning("event=stale_exports_removed folders=%s", removed)


@contextmanager
def nightly_lease(ledger: Ledger, paths: Paths, cfg: JobConfig) -> Iterator[Lease]:
    """The nightly job's lease; a dead run's `.tmp-*` export folders go on acquisition."""
    with job_lease(
        ledger,
        NIGHTLY,
        cfg.lock_ttl_s,
        cfg.lock_heartbeat_s,
        on_acquire=lambda: _cleanup_exports(paths),
    ) as lease:
        yield lease


def lease_for(ledger: Ledger, name: str, cfg: JobConfig) -> AbstractContextManager[Lease]:
    """The lease of a job without extra cleanup (retrain, bootstrap)."""
    return job_lease(ledger, name, cfg.lock_ttl_s, cfg.lock_heartbeat_s)


def recover_all(paths: Paths, cfg: JobConfig) -> dict[str, bool]:
    """Take and release each job's lease once, cleaning up after a dead holder; a job whose
    lease a live holder has is left alone (False)."""
    ledger = Ledger(paths.ledger, cfg.ledger_synchronous, cfg.holdout_fraction)
    try:
        out = {}
        for name in JOBS:
            cleanup = (lambda: _cleanup_exports(paths)) if name == NIGHTLY else None
            out[name] = recover(ledger, name, on_acquire=cleanup)
        return out
    finally:
        ledger.close()
