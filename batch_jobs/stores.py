"""The one way jobs and the server open the ledger and the pool from paths + config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from batch_jobs.config import JobConfig, Paths
from store.ledger import Ledger
from store.pool import Pool


def open_ledger(paths: Paths, cfg: JobConfig) -> Ledger:
    return Ledger(paths.ledger, cfg.ledger_synchronous, cfg.holdout_fraction)


def open_pool(paths: Paths, cfg: JobConfig) -> Pool:
    return Pool(paths.pool, cfg.pool_dtype)


@dataclass(frozen=True)
class Stores:
    ledger: Ledger
    pool: Pool


@contextmanager
def job_stores(paths: Paths, cfg: JobConfig, given: Stores | None = None) -> Iterator[Stores]:
    """The stores a job works on: `given` ones (a job run inside another, e.g. the nightly's
    retrain) are reused and left open; otherwise both are opened here and closed on exit."""
    if given is not None:
        yield given
        return
    with ExitStack() as stack:
        ledger = open_ledger(paths, cfg)
        stack.callback(ledger.close)
        pool = open_pool(paths, cfg)
        stack.callback(pool.close)
        yield Stores(ledger, pool)
