"""Two runners of the one scoring function: `local` (this process, or N worker processes) and
`ray` (Ray Data `map_batches` over chunk refs with an actor pool, one model per actor).

Either way only chunk refs go out and only each chunk's best `m` candidates (scores, predicted
class, confidence, features) come back: embeddings are read by whoever scores them, from storage
every worker reads. With Ray that keeps the object store to kilobytes per block (Ray Data
bounds its memory by execution slots × block size, and blocks that grow in a transformation
spill: ray-project/ray#34041), so a block is one chunk ref in and one candidate set out.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from acquisition.scores import STRATEGIES
from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.scoring import Scored, Source, mth_best, predict_kept, score_chunk
from model.classifier import Classifier
from model.registry import ModelRegistry
from model.threads import set_threads


@dataclass(frozen=True)
class ModelRef:
    """How a worker loads the model: a registry root every worker reads, and a version."""

    registry: Path
    version: str

    def load(self) -> Classifier:
        return ModelRegistry(self.registry).load(self.version)


@dataclass(frozen=True)
class Task:
    """Everything a worker needs besides the model and the chunk ref (sent once per worker)."""

    source: Source
    cfg: QueryConfig
    m: int
    seed: tuple[int, ...]
    prefilter: str = "off"  # EngineConfig.prefilter


def run_scoring(
    clf: Classifier,
    model: ModelRef | None,
    task: Task,
    engine: EngineConfig,
    progress: bool = False,
) -> Scored:
    """Score every chunk of `task.source`; the merged best `m` with whole-pool counts. A
    model-free score (random) ranks rows without the model; the model then runs here on the
    merged best `m` alone (read by locator), so on m rows of the pool on every runner."""
    refs = task.source.refs()
    total = sum(r.stop - r.start for r in refs)  # type: ignore[attr-defined]
    bar = tqdm(total=total, desc="score", unit="post", unit_scale=True, disable=not progress)
    acc = Scored.empty(len(clf.classes))

    def floor() -> float:  # the merged m-th best key so far: a chunk's rows below it cannot enter
        return mth_best(acc.scores, task.m)

    try:
        for rows, part in _results(clf, model, task, engine, refs, floor):
            acc = acc.merge(part, task.m)
            bar.update(rows)
    finally:
        bar.close()
    if not STRATEGIES[task.cfg.strategy].reads_model:
        acc = predict_kept(clf, task.source, acc, task.cfg)
    return acc


def _results(
    clf: Classifier,
    model: ModelRef | None,
    task: Task,
    engine: EngineConfig,
    refs: list[Any],
    floor: Callable[[], float],
) -> Iterator[tuple[int, Scored]]:
    """(rows, result) per chunk; in this process each chunk gets the running `floor`."""
    if not refs:
        return
    if engine.engine == "ray":
        if model is None:
            raise ValueError("the ray engine needs a registry model (ModelRef)")
        yield from _ray(model, task, engine, refs)
    elif engine.workers > 1 and model is not None and len(refs) > 1:
        yield from _processes(model, task, engine, refs)
    else:
        for ref in refs:
            yield _size(ref), _score(clf, task, ref, floor())


def _size(ref: Any) -> int:
    return int(ref.stop - ref.start)


def _score(clf: Classifier, task: Task, ref: Any, floor: float = -np.inf) -> Scored:
    """One chunk: read (with eligibility) and score, each timed."""
    src = task.source
    t0 = time.perf_counter()
    chunk = src.load(ref)
    t1 = time.perf_counter()
    out = score_chunk(clf, chunk, task.cfg, task.m, task.seed, src.key(ref), task.prefilter, floor)
    out.seconds = {"read": t1 - t0, "score": time.perf_counter() - t1}
    return out


# -- local worker processes -------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(model: ModelRef, task: Task, threads: int) -> None:
    set_threads(threads)  # explicit per worker: N workers × threads = the cores used
    _WORKER["clf"], _WORKER["task"] = model.load(), task


def _worker_score(ref: Any) -> tuple[int, Scored]:
    return _size(ref), _score(_WORKER["clf"], _WORKER["task"], ref)


def _processes(
    model: ModelRef, task: Task, engine: EngineConfig, refs: Sequence[Any]
) -> Iterator[tuple[int, Scored]]:
    ctx = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    with ProcessPoolExecutor(
        engine.workers, ctx, initializer=_init_worker, initargs=(model, task, engine.torch_threads)
    ) as pool:
        yield from pool.map(_worker_score, refs, chunksize=1)


# -- ray --------------------------------------------------------------------------------------
class _ScoreActor:
    """One model per actor; a batch is one chunk ref, the output one pickled candidate set."""

    def __init__(self, model: ModelRef, task: Task, refs: list[Any], threads: int) -> None:
        set_threads(threads)
        self.clf, self.task, self.refs = model.load(), task, refs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for i in batch["chunk"].tolist():
            ref = self.refs[i]
            out.append(pickle.dumps((_size(ref), _score(self.clf, self.task, ref))))
        return {"result": np.array(out, dtype=object)}


def _ray(
    model: ModelRef, task: Task, engine: EngineConfig, refs: list[Any]
) -> Iterator[tuple[int, Scored]]:
    import ray  # the optional extra: pip install -e '.[ray]'

    if not ray.is_initialized():
        ray.init(address=engine.ray_address or os.environ.get("RAY_ADDRESS"))
    ds = ray.data.from_items(
        [{"chunk": i} for i in range(len(refs))], override_num_blocks=len(refs)
    )
    scored = ds.map_batches(
        _ScoreActor,
        fn_constructor_kwargs={
            "model": model, "task": task, "refs": refs, "threads": engine.torch_threads,
        },
        compute=ray.data.ActorPoolStrategy(size=engine.workers),
        batch_size=1,
        num_cpus=engine.torch_threads,
        batch_format="numpy",
    )  # fmt: skip
    for row in scored.iter_rows():
        yield pickle.loads(row["result"])
