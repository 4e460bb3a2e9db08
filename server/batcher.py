"""Dynamic micro-batching on the server's event loop: concurrent Classify calls merged into one
forward pass, split back.

Every method runs on the event loop thread (the gRPC asyncio server's). A call joins the open
batch; the batch runs once `quiet_ticks` loop iterations in a row passed without a new call
joining it, once it is `max_delay_ms` old, or once the next call would pass `max_batch` posts.
A lone caller therefore waits a few loop iterations (microseconds), not `max_delay_ms`.

The forward pass runs inline on the loop: the folded model is cheap at these sizes (~0.1 ms for
one post, ~3 ms for 256), and handing it to another thread costs more than it saves, because
that thread then waits for the GIL after every numpy call (measured; README, serving). A single
call bigger than `max_batch` is not merged and runs on a worker thread instead, so one huge
call does not stall the loop for everyone else.
Each batch reads `holder.current` once, so every call in it is computed by one model version.
A call whose deadline passed (or that gRPC cancelled) while it waited is not computed.
With batching off (`max_batch` 1 or `max_delay_ms` 0) every call is its own forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from model.data import Views
from postclf_errors import DeadlineExpiredError
from server.config import BatcherConfig
from server.metrics import Metrics
from server.models import ModelHolder, ServedModel

log = logging.getLogger(__name__)

# `cfg.quiet_ticks`: loop iterations in a row without a new call before a batch runs. gRPC's
# asyncio server accepts one call at a time (each accept is a round trip through its
# completion-queue poller thread, several iterations), so calls that arrived together still
# join iterations apart. Default 16, chosen by 1-post, 64-in-flight runs: 1 → ~1.0 calls per
# forward pass, 4 → 1.2-1.8, 16 → 3.6-4.5, 64 → 4.0 with a slower lone caller. Waiting by
# time instead (call_later) sleeps at least 1 ms: epoll's resolution.


@dataclass(frozen=True)
class BatchResult:
    """Predictions of one call: `probs (n, C)`, `head (n,)`, and the model that made them."""

    probs: np.ndarray
    head: np.ndarray
    model: ServedModel


class _Call:
    __slots__ = ("deadline", "enqueued", "future", "views")

    def __init__(self, views: Views, deadline: float | None, future: asyncio.Future) -> None:
        self.views, self.deadline, self.future = views, deadline, future
        self.enqueued = time.monotonic()


def _compute(model: ServedModel, views: Views) -> BatchResult:
    probs, head = model.folded.predict(views)
    return BatchResult(probs, head, model)


class Batcher:
    def __init__(
        self, holder: ModelHolder, cfg: BatcherConfig, metrics: Metrics, big_calls: Executor
    ) -> None:
        self.holder, self.cfg, self.metrics = holder, cfg, metrics
        self.big_calls = big_calls  # runs a single call of more than max_batch posts
        self._open: list[_Call] = []  # the batch being gathered
        self._posts = 0  # posts in `_open`
        self._quiet = 0  # ticks in a row without a call joining
        self._ticking = False

    @property
    def waiting(self) -> int:
        """Calls gathered for the next forward pass (tests read it)."""
        return len(self._open)

    async def predict(self, views: Views, deadline: float | None) -> BatchResult:
        """Predict one call's posts `(n,)`; returns once its batch is done."""
        model = self.holder.require()  # fail fast (UNAVAILABLE) instead of queueing
        if not self.cfg.enabled or len(views) > self.cfg.max_batch:
            return await self._alone(model, views, deadline)
        loop = asyncio.get_running_loop()
        call = _Call(views, deadline, loop.create_future())
        if self._posts + len(views) > self.cfg.max_batch:
            self._flush()  # the open batch is full: it runs now, this call opens the next
        self._open.append(call)
        self._posts += len(views)
        self._quiet = 0
        if not self._ticking:
            self._ticking = True
            loop.call_soon(self._tick)
        return await call.future

    async def _alone(self, model: ServedModel, views: Views, deadline: float | None) -> BatchResult:
        if deadline is not None and deadline <= time.monotonic():
            self.metrics.expired.inc()
            raise DeadlineExpiredError("deadline passed before the call was computed")
        self.metrics.observe_batch(len(views), 1)
        if len(views) <= self.cfg.max_batch:
            return _compute(model, views)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.big_calls, _compute, model, views)

    def _tick(self) -> None:
        """Once per loop iteration: keep gathering while calls still join, else run."""
        if self._open and self._quiet < self.cfg.quiet_ticks:
            oldest = self._open[0].enqueued
            if time.monotonic() - oldest < self.cfg.max_delay_ms / 1000:
                self._quiet += 1
                asyncio.get_running_loop().call_soon(self._tick)
                return
        self._ticking = False
        self._flush()

    def _flush(self) -> None:
        batch, self._open, self._posts, self._quiet = self._open, [], 0, 0
        if batch:
            try:
                self._run(batch)
            except Exception as exc:  # never leave a caller hanging
                log.exception("event=batch_failed calls=%d", len(batch))
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(exc)

    def _run(self, batch: list[_Call]) -> None:
        now = time.monotonic()
        live = []
        for call in batch:
            if call.future.done():  # cancelled by gRPC (deadline, client gone)
                self.metrics.expired.inc()
            elif call.deadline is not None and call.deadline <= now:
                self.metrics.expired.inc()
                call.future.set_exception(DeadlineExpiredError("deadline passed while queued"))
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
        except Exception as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for call in live:  # find the call at fault; the others still get answers
                self._run_alone(call, model)
            return
        start = 0
        for call, n in zip(live, sizes, strict=True):
            part = slice(start, start + n)
            call.future.set_result(BatchResult(result.probs[part], result.head[part], model))
            start += n

    @staticmethod
    def _run_alone(call: _Call, model: ServedModel) -> None:
        try:
            call.future.set_result(_compute(model, call.views))
        except Exception as exc:
            call.future.set_exception(exc)
