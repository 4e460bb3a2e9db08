"""Pool and ledger writes of classified posts, off the request's latency path.

Classify hands each call's posts to one background thread that appends the embeddings to the
pool and records the posts in the ledger, coalescing queued calls into one write. Nothing is
dropped: a full queue makes callers wait, the pool's buffer is flushed when idle, a failed
write is logged and counted, `sync()` waits until everything submitted so far is written, and
`close()` drains the queue and flushes.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import numpy as np

from model.data import Views
from server.metrics import Metrics
from store.ledger import Ledger
from store.pool import Pool

log = logging.getLogger(__name__)

_STOP = object()
MAX_COALESCE = 64  # queued calls merged into one pool append + one ledger transaction


@dataclass(frozen=True)
class PoolBatch:
    post_ids: np.ndarray  # (n,) str
    views: Views
    predicted: list[str] | None  # (n,) class names, None for ingested posts
    model_version: str | None
    source: str  # "classify" | "ingest"


def write_batch(pool: Pool, ledger: Ledger, batch: PoolBatch) -> tuple[int, int]:
    """Embeddings into the pool first, then ledger rows; returns (new in pool, new in ledger)."""
    new_pool = pool.append(batch.post_ids, batch.views)
    new_ledger = ledger.add_posts(
        batch.post_ids.tolist(),
        batch.source,
        predicted_labels=batch.predicted,
        model_version=batch.model_version,
    )
    return new_pool, new_ledger


def _merge(batches: list[PoolBatch]) -> PoolBatch:
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    predicted = None if first.predicted is None else [p for b in batches for p in b.predicted or []]
    return PoolBatch(
        np.concatenate([b.post_ids for b in batches]),
        Views.concat([b.views for b in batches]),
        predicted,
        first.model_version,
        first.source,
    )


class PoolWriter:
    def __init__(
        self,
        pool: Pool,
        ledger: Ledger,
        metrics: Metrics,
        max_pending: int,
        flush_every_s: float = 5.0,
    ) -> None:
        self.pool, self.ledger, self.metrics = pool, ledger, metrics
        self.flush_every_s = flush_every_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._thread = threading.Thread(target=self._loop, name="pool-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: PoolBatch) -> None:
        with self._cond:
            self._submitted += 1
        self._queue.put(batch)  # blocks when full: back-pressure, never a silent drop
        self.metrics.pool_pending.inc()

    def sync(self, timeout: float | None = 30.0) -> bool:
        """Wait until every batch submitted before this call is written (or failed)."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self) -> None:
        """Write everything queued, stop the thread, flush the pool's buffer to disk."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self.pool.flush()

    def _take(self) -> tuple[list[PoolBatch], bool]:
        while True:
            try:
                first = self._queue.get(timeout=self.flush_every_s)
                break
            except queue.Empty:
                self._flush_pool()  # idle: put buffered rows on disk
        if first is _STOP:
            return [], True
        taken: list[PoolBatch] = [first]  # type: ignore[list-item]
        while len(taken) < MAX_COALESCE:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return taken, True
            taken.append(item)  # type: ignore[arg-type]
        return taken, False

    def _loop(self) -> None:
        while True:
            taken, stopping = self._take()
            for group in _groups(taken):
                self._write(group)
            with self._cond:
                self._done += len(taken)
                self._cond.notify_all()
            self.metrics.pool_pending.dec(len(taken))
            if stopping:
                return

    def _flush_pool(self) -> None:
        try:
            self.pool.flush()
        except Exception:
            log.exception("event=pool_flush_failed")

    def _write(self, group: list[PoolBatch]) -> None:
        n = sum(len(b.post_ids) for b in group)
        try:
            write_batch(self.pool, self.ledger, _merge(group))
        except Exception:
            self.metrics.pool_failures.inc(len(group))
            log.exception("event=pool_write_failed posts=%d", n)


def _groups(batches: list[PoolBatch]) -> list[list[PoolBatch]]:
    """Consecutive batches with the same source, version and modalities go in one write."""
    out: list[list[PoolBatch]] = []
    for b in batches:
        if out and _key(out[-1][0]) == _key(b):
            out[-1].append(b)
        else:
            out.append([b])
    return out


def _key(b: PoolBatch) -> tuple:
    return (b.source, b.model_version, tuple(b.views.dims.items()), b.predicted is None)
