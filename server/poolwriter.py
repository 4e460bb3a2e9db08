"""Pool and ledger writes of incoming posts: one thread, group commit, a future per call.

Every call's posts are queued to one background thread that merges what is queued into one
durable write (`store.posts.record_posts`: pool fsync, then ledger commit), so concurrent calls
share the fsyncs. When only best-effort (Classify) calls are queued, the thread sleeps up to
`linger_s` before writing: a durable group write has a fixed cost (two fsyncs, one transaction)
that 1-post calls would otherwise pay one or two at a time, and the thread wakes once per
linger instead of once per call. An IngestPosts call, `sync()` or a full queue ends the sleep.
`submit` returns a future that resolves once the call's posts are durable: IngestPosts waits on
it before replying; Classify does not (its pool entry is best effort: a crash loses at most what
was queued, never leaving the two stores inconsistent). A full queue makes callers wait
(back-pressure, never a drop); `sync()` waits for everything submitted so far; `close()` drains
the queue.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
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
    parts = [  # a call whose posts are all new to the group is taken whole, without a copy
        b.views if len(r) == len(b.post_ids) else b.views.take(np.asarray(r, np.int64))
        for b, r in zip(group, rows_of, strict=True)
    ]
    views = parts[0] if len(parts) == 1 else Views.concat(parts)
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
        self.linger_s, self.max_pending = linger_s, max_pending
        # The hot path (submit, on the event loop) takes no lock the writer thread also takes:
        # a deque append is atomic, and the writer only pops. A lock shared with the writer
        # made every 1-post Classify wait for a GIL hand-off whenever the writer held it.
        self._items: deque[object] = deque()
        self._submit_lock = threading.Lock()  # submitters only: seq order == deque order
        self._submitted = 0
        self._idle = False  # the writer is about to sleep or sleeps on `_wake`
        self._wake = threading.Event()  # something was queued while the writer was idle
        self._urgent = threading.Event()  # ends a linger early
        self._space = threading.Condition()  # submitters blocked on a full queue
        self._cond = threading.Condition()  # guards `_done`; sync() waits on it
        self._done = 0
        # Read at scrape time: a gauge bumped per call would be one more shared lock.
        metrics.pool_pending.set_function(lambda: self._submitted - self._done)
        self._thread = threading.Thread(target=self._loop, name="pool-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: PoolBatch) -> Future[int]:
        """Queue a call's posts; the future resolves once they are durable (or fails).

        A full queue blocks the caller until the writer catches up: back-pressure, never a drop."""
        if len(self._items) >= self.max_pending:
            self._urgent.set()
            with self._space:
                self._space.wait_for(lambda: len(self._items) < self.max_pending)
        self._put(batch, urgent=batch.source != "classify")
        return batch.done

    def _put(self, item: object, urgent: bool) -> None:
        with self._submit_lock:
            self._submitted += 1
            self._items.append(item)
        if urgent:
            self._urgent.set()  # somebody waits on it: no linger
        if self._idle:  # appended first, checked second: the writer cannot miss it
            self._wake.set()

    def sync(self, timeout: float | None = 30.0) -> bool:
        """Wait until every batch submitted before this call is written (or failed)."""
        target = self._submitted
        self._urgent.set()  # somebody waits: end a linger now
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self) -> None:
        """Write everything queued, stop the thread, close the pool's open segments."""
        if self._thread.is_alive():
            self._put(_STOP, urgent=True)
            self._thread.join()
        self.pool.close()

    def _wait_for_work(self) -> None:
        while not self._items:  # a stale wake-up finds it empty and sleeps again
            self._idle = True  # set first, checked by submitters after their append
            if not self._items:
                self._wake.wait()
            self._wake.clear()  # an item appended since is in the deque: seen above
        self._idle = False
        first = self._items[0]
        if isinstance(first, PoolBatch) and first.source == "classify" and self.linger_s > 0:
            # Sleep through the linger instead of waking per queued entry; only an ingest
            # (somebody waits on it), sync(), a full queue or close() ends it early.
            self._urgent.wait(self.linger_s)
        self._urgent.clear()

    def _take(self) -> tuple[list[PoolBatch], bool, int]:
        """Queued batches (at most MAX_COALESCE), whether stop was asked, items popped."""
        self._wait_for_work()
        taken: list[PoolBatch] = []
        popped, stopping = 0, False
        while self._items and len(taken) < MAX_COALESCE:
            item = self._items.popleft()
            popped += 1
            if item is _STOP:
                stopping = True
                break
            taken.append(item)  # type: ignore[arg-type]
        with self._space:
            self._space.notify_all()
        return taken, stopping, popped

    def _loop(self) -> None:
        while True:
            taken, stopping, popped = self._take()
            for group in _groups(taken):
                self._write(group)
            with self._cond:
                self._done += popped
                self._cond.notify_all()
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
