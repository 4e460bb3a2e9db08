"""Dynamic micro-batching on the server's event loop: concurrent Classify calls merged into one
forward pass, split back.

Every method runs on the event loop thread (the gRPC asyncio server's). A call joins the open
batch; the batch runs once `quiet_ticks` loop iterations in a row passed without a new call
joining it, once it is `max_delay_ms` old, or once the next call would pass `max_batch` posts.
A lone caller therefore waits a few loop iterations (microseconds), not `max_delay_ms`.

A small batch runs inline on the loop: the folded model is cheap at those sizes (tens of µs
for a few posts), and a hand-off to another thread costs more than it saves. A batch of at
least `offload_posts` posts (and a single call bigger than `max_batch`, which is never merged)
runs on the forward thread instead, as one TorchScript graph that holds no GIL while it
computes (model/scripted.py): the loop meanwhile decodes, answers and gathers other calls on
the other core. numpy on that thread would not do: it takes the GIL back after every
operation, and each time waits for the busy loop to let go of it (README, serving).
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
    """On the loop: numpy, the fastest path for a few posts."""
    probs, head = model.folded.predict(views)
    return BatchResult(probs, head, model)


def _compute_gil_free(model: ServedModel, views: Views) -> BatchResult:
    """On the forward thread: the same layers as one graph that runs without the GIL (numpy
    when the model could not be scripted)."""
    probs, head = (model.scripted or model.folded).predict(views)
    return BatchResult(probs, head, model)


class Batcher:
    def __init__(
        self, holder: ModelHolder, cfg: BatcherConfig, metrics: Metrics, forward: Executor
    ) -> None:
        self.holder, self.cfg, self.metrics = holder, cfg, metrics
        self.forward = forward  # one thread: big batches and single calls above max_batch
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
        if len(views) <= self.cfg.max_batch and not self._offloads(len(views), model):
            return _compute(model, views)
        return await self._off_loop(model, views)

    def _offloads(self, posts: int, model: ServedModel) -> bool:
        return model.scripted is not None and 0 < self.cfg.offload_posts <= posts

    def _off_loop(self, model: ServedModel, views: Views) -> asyncio.Future:
        """The forward pass on the forward thread; the future resolves on the loop."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.forward, _compute_gil_free, model, views)

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
            if self._offloads(len(views), model):
                done = self._off_loop(model, views)
                done.add_done_callback(lambda d: self._deliver(d, live, sizes, model))
                return
            result = _compute(model, views)
        except Exception as exc:
            self._failed(exc, live, model)
            return
        self._split(result, live, sizes)

    def _deliver(
        self, done: asyncio.Future, live: list[_Call], sizes: list[int], model: ServedModel
    ) -> None:
        """On the loop, once the forward thread finished `live`'s batch."""
        exc = done.exception()
        if exc is not None:
            self._failed(exc, live, model)
        else:
            self._split(done.result(), live, sizes)

    def _failed(self, exc: BaseException, live: list[_Call], model: ServedModel) -> None:
        if len(live) == 1:
            if not live[0].future.done():
                live[0].future.set_exception(exc)
            return
        for call in live:  # find the call at fault; the others still get answers
            if not call.future.done():
                self._run_alone(call, model)

    @staticmethod
    def _split(result: BatchResult, live: list[_Call], sizes: list[int]) -> None:
        start = 0
        for call, n in zip(live, sizes, strict=True):
            part = slice(start, start + n)
            if not call.future.done():  # an offloaded batch's caller may have gone meanwhile
                probs, head = result.probs[part], result.head[part]
                call.future.set_result(BatchResult(probs, head, result.model))
            start += n

    @staticmethod
    def _run_alone(call: _Call, model: ServedModel) -> None:
        try:
            call.future.set_result(_compute(model, call.views))
        except Exception as exc:
            call.future.set_exception(exc)
