"""Batcher without a network: merging, one model per batch, deadlines, max_batch, isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from model.data import Views
from postclf_errors import DeadlineExpiredError, ModelUnavailableError
from server.batcher import Batcher, BatchResult
from server.config import BatcherConfig
from server.metrics import Metrics
from server.models import ServedModel
from tests.conftest import wait_until

N_CLASSES = 3


class FakeClf:
    """Row i gets class `int(image[i, 0]) % 3`. `hold()` makes the next predict wait for
    `release`; `fail_if(views)` makes a predict raise."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self._hold_next = False
        self.fail_if: Callable[[Views], bool] = lambda v: False

    def hold(self) -> None:
        self._hold_next, self.release = True, threading.Event()
        self.entered.clear()

    def predict(self, views: Views) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(views))
        hold, self._hold_next = self._hold_next, False
        self.entered.set()
        if hold:
            assert self.release.wait(10), "the test never released the held batch"
        if self.fail_if(views):
            raise RuntimeError("bad batch")
        assert views.image is not None
        cls = views.image[:, 0].astype(np.int64) % N_CLASSES
        return np.eye(N_CLASSES, dtype=np.float32)[cls], np.zeros(len(views), np.int8)


class FakeHolder:
    def __init__(self, clf: FakeClf | None, version: str = "v1") -> None:
        self.current = None if clf is None else ServedModel(version, clf, clf)  # type: ignore[arg-type]

    def require(self) -> ServedModel:
        if self.current is None:
            raise ModelUnavailableError("no model")
        return self.current


def views_of(values: list[int]) -> Views:
    img = np.asarray(values, np.float32)[:, None].repeat(2, axis=1)
    return Views(img, None, np.ones(len(values), bool), None)


def labels(result: BatchResult) -> list[int]:
    return result.probs.argmax(axis=1).tolist()


@pytest.fixture
def clf() -> FakeClf:
    return FakeClf()


@pytest.fixture
def holder(clf: FakeClf) -> FakeHolder:
    return FakeHolder(clf)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def make(holder: FakeHolder, metrics: Metrics):  # type: ignore[no-untyped-def]
    made: list[Batcher] = []

    def build(max_batch: int = 256, max_delay_ms: float = 1000.0) -> Batcher:
        b = Batcher(holder, BatcherConfig(max_batch, max_delay_ms), metrics)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield build
    for b in made:
        b.stop()


def behind_a_held_call(
    batcher: Batcher, clf: FakeClf, calls: list[list[int]], deadline: float | None = None
) -> tuple[Future, list[Future]]:
    """Hold the worker in a first call, queue `calls` behind it; all their futures."""
    clf.hold()
    pool = ThreadPoolExecutor(len(calls) + 1)
    first = pool.submit(batcher.predict, views_of([0]), None)
    assert clf.entered.wait(10)
    rest = [pool.submit(batcher.predict, views_of(c), deadline) for c in calls]
    wait_until(lambda: batcher._queue.qsize() == len(calls))
    pool.shutdown(wait=False)
    return first, rest


def test_lone_call_does_not_wait_for_the_window(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_delay_ms=60_000)  # a lone caller that waited would time the test out
    res = batcher.predict(views_of([1, 2]), None)
    assert labels(res) == [1, 2] and res.model.version == "v1"
    assert clf.sizes == [2]


def test_queued_calls_merge_into_one_pass_and_split_back(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    first, rest = behind_a_held_call(batcher, clf, [[1], [2, 2], [0, 1, 2]])
    clf.release.set()
    assert labels(first.result(10)) == [0]
    assert [labels(f.result(10)) for f in rest] == [[1], [2, 2], [0, 1, 2]]
    assert clf.sizes == [1, 6]


def test_one_model_version_per_batch_across_a_swap(make, clf, holder) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    first, rest = behind_a_held_call(batcher, clf, [[1], [2]])
    swapped = FakeClf()
    holder.current = ServedModel("v2", swapped, swapped)  # type: ignore[arg-type]  # mid-batch
    clf.release.set()
    assert first.result(10).model.version == "v1"  # the batch in flight keeps its model
    assert {f.result(10).model.version for f in rest} == {"v2"}  # the next batch: one version


def test_max_batch_closes_a_batch_but_never_splits_a_call(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_batch=4)
    _first, rest = behind_a_held_call(batcher, clf, [[1, 1, 1], [2, 2], [0, 0, 0, 0, 0, 0]])
    clf.release.set()
    assert [labels(f.result(10)) for f in rest] == [[1, 1, 1], [2, 2], [0] * 6]
    assert clf.sizes == [1, 3, 2, 6]  # 3+2 > 4 closes the batch; 6 posts alone is still one


def test_call_whose_deadline_passes_in_the_queue_is_not_computed(make, clf, metrics) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    first, rest = behind_a_held_call(batcher, clf, [[1]], deadline=time.monotonic() + 0.05)
    with pytest.raises(DeadlineExpiredError):
        rest[0].result(10)
    clf.release.set()
    first.result(10)
    batcher.predict(views_of([2]), None)  # a sync point: the worker has passed the expired call
    assert clf.sizes == [1, 1]  # the expired call never reached the model
    assert metrics.expired._value.get() == 1


def test_past_deadline_and_no_model_fail_fast(make, holder) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    with pytest.raises(DeadlineExpiredError):
        batcher.predict(views_of([1]), time.monotonic() - 1)
    holder.current = None
    with pytest.raises(ModelUnavailableError):
        batcher.predict(views_of([1]), None)


def test_a_failing_call_fails_alone_in_a_merged_batch(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    clf.fail_if = lambda v: v.image is not None and bool((v.image[:, 0] == 7).any())
    first, rest = behind_a_held_call(batcher, clf, [[1], [7], [2]])
    clf.release.set()
    first.result(10)
    assert labels(rest[0].result(10)) == [1] and labels(rest[2].result(10)) == [2]
    with pytest.raises(RuntimeError, match="bad batch"):
        rest[1].result(10)


def test_batching_off_runs_inline(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_batch=1)
    assert labels(batcher.predict(views_of([2, 1]), None)) == [2, 1]
    assert not batcher._thread.is_alive() and clf.sizes == [2]


def test_signal_wakes_its_waiter_once_and_stays_set() -> None:
    from server.batcher import Signal

    sig = Signal()
    assert not sig.wait(0.01) and not sig.is_set()  # times out while unset
    woke = threading.Event()
    t = threading.Thread(target=lambda: sig.wait() and woke.set())
    t.start()
    sig.set()
    t.join(10)
    assert woke.is_set() and sig.is_set()
    sig.set()  # idempotent
    assert sig.wait(0) and sig.wait()  # set: every later wait returns at once
