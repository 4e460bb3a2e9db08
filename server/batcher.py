"""Dynamic micro-batching: concurrent Classify calls merged into one forward pass, split back.

A call waits at most `max_delay_ms` for others to join, and not at all when no other call is
queued or computing (a lone caller pays no delay); a batch closes early once adding the next call
would pass `max_batch` posts (a single bigger call is still one batch, never split).
Each batch reads `holder.current` once, so every call in it is computed by one model version.
A call whose deadline passed while queued is not computed (DeadlineExpiredError).
With batching off (`max_batch` 1 or `max_delay_ms` 0) calls run inline on the handler thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from model.data import Views
from postclf_errors import DeadlineExpiredError
from server.config import BatcherConfig
from server.metrics import Metrics
from server.models import ModelHolder, ServedModel

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class BatchResult:
    """Predictions of one call: `probs (n, C)`, `head (n,)`, and the model that made them."""

    probs: np.ndarray
    head: np.ndarray
    model: ServedModel


class Signal:
    """A one-shot wake-up for one waiter: a Lock taken at birth and released once.

    Half the cost of `threading.Event` (no Condition, no waiter list); under 1-post load the
    per-call hand-off is one of the largest costs of the server (see README, serving)."""

    __slots__ = ("_lock", "fired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.fired = False

    def set(self) -> None:
        if not self.fired:
            self.fired = True
            self._lock.release()

    def is_set(self) -> bool:
        return self.fired

    def wait(self, timeout: float | None = None) -> bool:
        """True once set (at once if it already was); False when `timeout` s passed first."""
        if self.fired:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()  # keep it released: later waits return at once
            return True
        return self.fired


@dataclass(eq=False)
class _Call:
    views: Views
    deadline: float | None  # time.monotonic() value, None = no deadline
    enqueued: float = field(default_factory=time.monotonic)
    done: Signal = field(default_factory=Signal)
    result: BatchResult | None = None
    error: BaseException | None = None
    cancelled: bool = False

    def finish(self, result: BatchResult | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


def _compute(model: ServedModel, views: Views) -> BatchResult:
    probs, head = model.folded.predict(views)
    return BatchResult(probs, head, model)


class Batcher:
    def __init__(self, holder: ModelHolder, cfg: BatcherConfig, metrics: Metrics) -> None:
        self.holder, self.cfg, self.metrics = holder, cfg, metrics
        self._queue: queue.Queue[object] = queue.Queue()
        self._carry: _Call | None = None
        self._open = 0  # calls queued or being computed, not yet finished
        self._open_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        if cfg.enabled:
            self._thread.start()

    def predict(self, views: Views, deadline: float | None) -> BatchResult:
        """Predict one call's posts `(n,)`; blocks until its batch is done."""
        if not self.cfg.enabled:
            model = self.holder.require()
            if deadline is not None and deadline <= time.monotonic():
                raise DeadlineExpiredError("deadline passed before the call was computed")
            self.metrics.observe_batch(len(views), 1)
            return _compute(model, views)
        self.holder.require()  # fail fast (UNAVAILABLE) instead of queueing
        call = _Call(views, deadline)
        with self._open_lock:
            self._open += 1
        self._queue.put(call)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not call.done.wait(timeout):
            call.cancelled = True  # the worker skips it if it has not started it yet
            if not call.done.wait(0.05):
                raise DeadlineExpiredError("deadline passed while queued for a batch")
        if call.error is not None:
            raise call.error
        assert call.result is not None  # set together with `done`
        return call.result

    def stop(self) -> None:
        """Finish every queued call, then end the worker."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    # -- worker ------------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> object:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is not None and timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _gather(self, first: _Call) -> tuple[list[_Call], bool]:
        """Calls for one batch, starting with `first`; second value: stop was requested."""
        batch, total = [first], len(first.views)
        close_at = first.enqueued + self.cfg.max_delay_ms / 1000
        while total < self.cfg.max_batch:
            if self._carry is None and self._queue.empty() and self._open <= len(batch):
                break  # nobody else is queued or computing: waiting cannot grow the batch
            try:
                item = self._next(close_at - time.monotonic())
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Call)
            if total + len(item.views) > self.cfg.max_batch:
                self._carry = item
                break
            batch.append(item)
            total += len(item.views)
        return batch, False

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            assert isinstance(first, _Call)
            batch, stopping = self._gather(first)
            try:
                self._run(batch)
            except Exception as exc:
                log.exception("event=batch_failed calls=%d", len(batch))
                for call in batch:
                    if not call.done.is_set():
                        call.finish(error=exc)
            with self._open_lock:
                self._open -= len(batch)
            if stopping:
                self._queue.put(_STOP)  # drain the rest first (FIFO), then stop

    def _run(self, batch: list[_Call]) -> None:
        now = time.monotonic()
        live = []
        for call in batch:
            if call.cancelled or (call.deadline is not None and call.deadline <= now):
                self.metrics.expired.inc()
                call.finish(error=DeadlineExpiredError("deadline passed while queued"))
            else:
                self.metrics.queue_delay.observe(now - call.enqueued)
                live.append(call)
        if not live:
            return
        model = self.holder.require()  # one model object for the whole batch
        sizes = [len(c.views) for c in live]
        self.metrics.observe_batch(sum(sizes), len(live))
        try:
            views = live[0].views if len(live) == 1 else Views.concat([c.views for c in live])
            result = _compute(model, views)
        except Exception:
            if len(live) == 1:
                raise
            for call in live:
                self._run_alone(call, model)
            return
        start = 0
        for call, n in zip(live, sizes, strict=True):
            part = slice(start, start + n)
            call.finish(BatchResult(result.probs[part], result.head[part], model))
            start += n

    @staticmethod
    def _run_alone(call: _Call, model: ServedModel) -> None:
        try:
            call.finish(_compute(model, call.views))
        except Exception as exc:
            call.finish(error=exc)
