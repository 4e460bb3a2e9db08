"""Pool and ledger writes of incoming posts: one thread, group commit, a future per call.

Every call's posts are queued to one background thread that merges what is queued into one
durable write (`store.posts.record_posts`: pool fsync, then ledger commit), so concurrent calls
share the fsyncs. When only best-effort (Classify) calls are queued, the thread lingers up to
`linger_s` for more before writing: a durable group write has a fixed cost (two fsyncs, one
transaction) that 1-post calls would otherwise pay one or two at a time; an IngestPosts call
ends the wait at once. `submit` returns a future that resolves once the call's posts are durable:
IngestPosts waits on it before replying; Classify does not (its pool entry is best effort: a
crash loses at most what was queued, never leaving the two stores inconsistent). A full queue
makes callers wait (back-pressure, never a drop); `sync()` waits for everything submitted so
far; `close()` drains the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from model.data import Views
from server.metrics import Metrics
from store.ledger import Ledger
from store.pool import Pool
from store.posts import PostBatch, record_posts

log = logging.getLogger(__name__)

_STOP = object()
MAX_COALESCE = 1024  # queued calls merged into one pool append + one ledger transaction


@dataclass(frozen=True)
class PoolBatch:
    post_ids: np.ndarray  # (n,) str, distinct within the call
    views: Views
    predicted: list[str] | None  # (n,) class names, None for ingested posts
    model_version: str | None
    source: str  # "classify" | "ingest"
    done: Future[int] = field(default_factory=Future, compare=False)  # → posts new to the ledger


def write_group(pool: Pool, ledger: Ledger, group: list[PoolBatch]) -> list[int]:
    """One durable write for calls sharing source, version and modalities; new posts per call.

    A post sent by two calls of the group counts as new for the first only."""
    first = group[0]
    merged: list[tuple[int, int, str]] = []  # (call, row in call, post id)
    rows_of: list[list[int]] = [[] for _ in group]
    seen: set[str] = set()
    for k, b in enumerate(group):
        for i, pid in enumerate(b.post_ids.tolist()):
            if pid not in seen:
                seen.add(pid)
                merged.append((k, i, pid))
                rows_of[k].append(i)
    views = Views.concat(
        [b.views.take(np.asarray(r, np.int64)) for b, r in zip(group, rows_of, strict=True)]
    )
    ids = [pid for _, _, pid in merged]
    owner = [k for k, _, _ in merged]
    predicted = None
    if first.predicted is not None:
        predicted = [group[k].predicted[i] for k, i, _ in merged]  # type: ignore[index]
    fresh = record_posts(
        pool, ledger, PostBatch(ids, views, first.source, predicted, first.model_version)
    )
    counts = [0] * len(group)
    for k, new in zip(owner, fresh.tolist(), strict=True):
        counts[k] += new
    return counts


class PoolWriter:
    def __init__(
        self,
        pool: Pool,
        ledger: Ledger,
        metrics: Metrics,
        max_pending: int,
        linger_s: float = 0.0,
    ) -> None:
        self.pool, self.ledger, self.metrics = pool, ledger, metrics
        self.linger_s = linger_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._thread = threading.Thread(target=self._loop, name="pool-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: PoolBatch) -> Future[int]:
        """Queue a call's posts; the future resolves once they are durable (or fails)."""
        with self._cond:
            self._submitted += 1
        self._queue.put(batch)  # blocks when full: back-pressure, never a silent drop
        self.metrics.pool_pending.inc()
        return batch.done

    def sync(self, timeout: float | None = 30.0) -> bool:
        """Wait until every batch submitted before this call is written (or failed)."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self) -> None:
        """Write everything queued, stop the thread, close the pool's open segments."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self.pool.close()

    def _take(self) -> tuple[list[PoolBatch], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        taken: list[PoolBatch] = [first]  # type: ignore[list-item]
        close_at = time.monotonic() + self.linger_s
        best_effort = first.source == "classify"  # type: ignore[attr-defined]
        while len(taken) < MAX_COALESCE:
            # Linger only while everything taken is best effort (nobody waits on it).
            wait = close_at - time.monotonic() if best_effort else 0.0
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return taken, True
            taken.append(item)  # type: ignore[arg-type]
            best_effort = best_effort and item.source == "classify"  # type: ignore[attr-defined]
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

    def _write(self, group: list[PoolBatch]) -> None:
        try:
            counts = write_group(self.pool, self.ledger, group)
        except Exception as err:
            self.metrics.pool_failures.inc(len(group))
            n = sum(len(b.post_ids) for b in group)
            log.exception("event=pool_write_failed posts=%d", n)
            for b in group:
                b.done.set_exception(err)
            return
        for b, new in zip(group, counts, strict=True):
            b.done.set_result(new)


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
