"""Batcher without a network, on a real event loop: merging, one model per batch, deadlines,
max_batch, big calls off the loop, cancellation, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model.data import Views
from postclf_errors import DeadlineExpiredError, ModelUnavailableError
from server.batcher import Batcher, BatchResult
from server.config import BatcherConfig
from server.metrics import Metrics
from server.models import ServedModel

N_CLASSES = 3


class FakeClf:
    """Row i gets class `int(image[i, 0]) % 3`. `during(fn)` runs `fn` inside the next
    predict (e.g. sleep there, as a slow batch would); `fail_if(views)` makes a predict raise."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.threads: list[str] = []
        self._during: Callable[[], None] | None = None
        self.fail_if: Callable[[Views], bool] = lambda v: False

    def during(self, fn: Callable[[], None]) -> None:
        self._during = fn

    def predict(self, views: Views) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(views))
        self.threads.append(threading.current_thread().name)
        fn, self._during = self._during, None
        if fn is not None:
            fn()
        if self.fail_if(views):
            raise RuntimeError("bad batch")
        assert views.image is not None
        cls = views.image[:, 0].astype(np.int64) % N_CLASSES
        return np.eye(N_CLASSES, dtype=np.float32)[cls], np.zeros(len(views), np.int8)


class FakeHolder:
    def __init__(self, clf: FakeClf | None, version: str = "v1") -> None:
        self.current = None if clf is None else ServedModel(version, clf, clf, clf)  # type: ignore[arg-type]

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
    pool = ThreadPoolExecutor(1, thread_name_prefix="forward")

    def build(max_batch: int = 256, max_delay_ms: float = 1000.0, offload: int = 0) -> Batcher:
        cfg = BatcherConfig(max_batch, max_delay_ms, offload_posts=offload)
        return Batcher(holder, cfg, metrics, pool)  # type: ignore[arg-type]

    yield build
    pool.shutdown()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


async def together(batcher: Batcher, calls: list[list[int]], deadline: float | None = None):  # type: ignore[no-untyped-def]
    """Calls issued in one loop iteration, as concurrent RPCs arrive; results or errors."""
    tasks = [batcher.predict(views_of(c), deadline) for c in calls]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_lone_call_does_not_wait_for_the_window(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_delay_ms=60_000)  # a lone caller that waited would time the test out
    res = run(batcher.predict(views_of([1, 2]), None))
    assert labels(res) == [1, 2] and res.model.version == "v1"
    assert clf.sizes == [2] and clf.threads == [threading.current_thread().name]  # on the loop


def test_concurrent_calls_merge_into_one_pass_and_split_back(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    out = run(together(batcher, [[1], [2, 2], [0, 1, 2]]))
    assert [labels(r) for r in out] == [[1], [2, 2], [0, 1, 2]]
    assert clf.sizes == [6] and batcher.waiting == 0


def test_calls_keep_joining_while_they_arrive_across_iterations(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make()

    async def staggered() -> list:
        async def late(k: int) -> BatchResult:
            for _ in range(k):
                await asyncio.sleep(0)  # one loop iteration per step
            return await batcher.predict(views_of([k]), None)

        return await asyncio.gather(*(late(k) for k in range(4)))

    out = run(staggered())
    assert [labels(r) for r in out] == [[0], [1], [2], [0]]
    assert clf.sizes == [4]  # one call per iteration kept the batch open


def test_the_window_bounds_how_long_a_batch_gathers(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_delay_ms=5)

    async def stream() -> list:
        async def caller(k: int) -> BatchResult:
            await asyncio.sleep(0.002 * k)  # a steady stream, 2 ms apart, for ~40 ms
            return await batcher.predict(views_of([k]), None)

        return await asyncio.gather(*(caller(k) for k in range(20)))

    run(stream())
    assert sum(clf.sizes) == 20 and len(clf.sizes) >= 2  # the window closed batches


def test_one_model_version_per_batch_across_a_swap(make, clf, holder) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    swapped = FakeClf()

    async def scenario() -> tuple[list, list]:
        tasks = [asyncio.ensure_future(batcher.predict(views_of([k]), None)) for k in (1, 2)]
        await asyncio.sleep(0)  # both joined the open batch
        holder.current = ServedModel("v2", swapped, swapped, swapped)  # swap while it gathers
        first = await asyncio.gather(*tasks)
        return first, await together(batcher, [[0], [1]])

    first, later = run(scenario())
    assert {r.model.version for r in first} == {"v2"}  # the batch read the holder once
    assert {r.model.version for r in later} == {"v2"} and swapped.sizes == [2, 2]
    assert clf.sizes == []


def test_a_batch_in_flight_keeps_its_model(make, clf, holder) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    swapped = FakeClf()
    clf.during(lambda: setattr(holder, "current", ServedModel("v2", swapped, swapped, swapped)))
    out = run(together(batcher, [[1], [2]]))  # the swap lands during the forward pass
    assert {r.model.version for r in out} == {"v1"}
    assert run(batcher.predict(views_of([0]), None)).model.version == "v2"


def test_max_batch_closes_a_batch_but_never_splits_a_call(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_batch=4)
    out = run(together(batcher, [[1, 1, 1], [2, 2], [0, 0, 0, 0, 0, 0]]))
    assert [labels(r) for r in out] == [[1, 1, 1], [2, 2], [0] * 6]
    assert sorted(clf.sizes) == [2, 3, 6]  # 3+2 > 4 closes the batch; 6 posts alone is one
    big = clf.threads[clf.sizes.index(6)]
    assert big.startswith("forward") and clf.threads[clf.sizes.index(3)] != big  # off the loop


def test_a_big_batch_runs_on_the_forward_thread_and_splits_back(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(offload=4)
    out = run(together(batcher, [[1, 1], [2, 2, 0]]))  # 5 posts ≥ 4: off the loop
    assert [labels(r) for r in out] == [[1, 1], [2, 2, 0]] and clf.sizes == [5]
    assert run(batcher.predict(views_of([2]), None)).model.version == "v1"  # 1 post: inline
    assert clf.threads[0].startswith("forward")
    assert clf.threads[1] == threading.current_thread().name
    alone = make(max_batch=1, offload=2)  # batching off: a call alone is offloaded by size too
    assert labels(run(alone.predict(views_of([1, 2]), None))) == [1, 2]
    assert clf.threads[2].startswith("forward")


def test_a_caller_gone_while_its_batch_is_offloaded_leaves_the_others_answered(make, clf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(offload=2)
    computing = threading.Event()
    clf.during(lambda: (computing.set(), time.sleep(0.05)))

    async def scenario() -> tuple[bool, list[int]]:
        gone = asyncio.ensure_future(batcher.predict(views_of([1, 1]), None))
        stays = asyncio.ensure_future(batcher.predict(views_of([2]), None))
        while not computing.is_set():  # the merged batch is on the forward thread
            await asyncio.sleep(0.001)
        gone.cancel()
        answer = labels(await stays)
        await asyncio.sleep(0.01)
        return gone.cancelled(), answer

    cancelled, answered = run(scenario())
    assert cancelled and answered == [2] and clf.sizes == [3]


def test_a_failing_call_fails_alone_in_an_offloaded_batch(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(offload=2)
    clf.fail_if = lambda v: v.image is not None and bool((v.image[:, 0] == 7).any())
    out = run(together(batcher, [[1, 1], [7], [2]]))
    assert labels(out[0]) == [1, 1] and labels(out[2]) == [2]
    assert isinstance(out[1], RuntimeError) and "bad batch" in str(out[1])


def test_an_offloaded_batch_keeps_its_model_across_a_swap(make, clf, holder) -> None:  # type: ignore[no-untyped-def]
    batcher = make(offload=2)
    swapped = FakeClf()
    clf.during(lambda: setattr(holder, "current", ServedModel("v2", swapped, swapped, swapped)))
    out = run(together(batcher, [[1], [2]]))  # the swap lands while the forward thread runs
    assert {r.model.version for r in out} == {"v1"} and clf.threads[0].startswith("forward")
    assert run(batcher.predict(views_of([0, 1]), None)).model.version == "v2"


def test_call_whose_deadline_passes_while_waiting_is_not_computed(make, clf, metrics) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_batch=2)
    clf.during(lambda: time.sleep(0.1))  # the first batch is slow
    late = time.monotonic() + 0.05

    async def scenario() -> list:
        first = batcher.predict(views_of([0, 0]), None)
        return await asyncio.gather(
            first, batcher.predict(views_of([1]), late), return_exceptions=True
        )

    out = run(scenario())
    assert labels(out[0]) == [0, 0] and isinstance(out[1], DeadlineExpiredError)
    assert clf.sizes == [2]  # the expired call never reached the model
    assert metrics.expired._value.get() == 1


def test_a_call_cancelled_by_grpc_is_not_computed(make, clf, metrics) -> None:  # type: ignore[no-untyped-def]
    batcher = make()

    async def scenario() -> list:
        gone = asyncio.ensure_future(batcher.predict(views_of([1]), None))
        await asyncio.sleep(0)  # it joined the open batch
        gone.cancel()  # what gRPC does when the client's deadline passes or it hangs up
        return await together(batcher, [[2]])

    out = run(scenario())
    assert labels(out[0]) == [2] and clf.sizes == [1]
    assert metrics.expired._value.get() == 1


def test_past_deadline_and_no_model_fail(make, holder) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    with pytest.raises(DeadlineExpiredError):
        run(batcher.predict(views_of([1]), time.monotonic() - 1))
    holder.current = None
    with pytest.raises(ModelUnavailableError):
        run(batcher.predict(views_of([1]), None))


def test_a_failing_call_fails_alone_in_a_merged_batch(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make()
    clf.fail_if = lambda v: v.image is not None and bool((v.image[:, 0] == 7).any())
    out = run(together(batcher, [[1], [7], [2]]))
    assert labels(out[0]) == [1] and labels(out[2]) == [2]
    assert isinstance(out[1], RuntimeError) and "bad batch" in str(out[1])


def test_batching_off_computes_every_call_alone(make, clf: FakeClf) -> None:  # type: ignore[no-untyped-def]
    batcher = make(max_batch=1)
    out = run(together(batcher, [[2, 1], [0]]))
    assert [labels(r) for r in out] == [[2, 1], [0]] and clf.sizes == [2, 1]
    assert run(batcher.predict(views_of([1]), None)).model.version == "v1"


def test_without_a_scripted_graph_big_batches_run_inline(
    make, clf, holder, monkeypatch, tiny_model
) -> None:  # type: ignore[no-untyped-def]
    """If TorchScript fails for a version (it is deprecated upstream), serving goes on."""
    import server.models as models

    def broken(folded: object) -> None:
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(models, "ScriptedClassifier", broken)
    served = ServedModel.of("v3", tiny_model)
    assert served.scripted is None and served.folded is not None
    holder.current = ServedModel("v1", clf, clf, None)
    out = run(together(make(offload=2), [[1, 1], [2]]))
    assert [labels(r) for r in out] == [[1, 1], [2]]
    assert clf.threads == [threading.current_thread().name]  # on the loop, not offloaded
