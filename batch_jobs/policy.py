"""The budget-aware query policy the nightly job and the simulator share.

`propose_policy` wraps `active_step.propose`:
- **cold start**: while fewer than `cold_start_labels` posts carry labels (gate posts aside),
  the query is the most typical post of each least-covered cluster (`acquisition.typicality`)
  of a uniform sample of at most `cold_start_sample` eligible posts (a random-strategy scoring
  pass, so memory stays bounded by the sample, never the pool);
- otherwise the configured strategy (uncertainty, optional sampling, diversity, balance);
- **random control share**: `round(random_share · q)` rows of every query are drawn uniformly
  from the eligible posts (reason `control:random`), an unbiased sample of what the model
  sees, so its errors can be estimated without the strategy's selection bias.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from acquisition.typicality import REASON as TYPICAL
from acquisition.typicality import typical_picks
from batch_jobs.active_step import ProposedQuery, _chosen, _counts, propose
from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.runners import ModelRef, Task, run_scoring
from batch_jobs.scoring import MemorySource, Source
from model.classifier import Classifier
from model.data import Views

CONTROL = "control:random"
CONTROL_STREAM, COLD_STREAM = 0xC0417, 0xC01D


def control_count(q: int, share: float) -> int:
    """Rows of a `q`-row query drawn at random: `round(share · q)`, at least 1 when share > 0."""
    return 0 if share <= 0 else min(q, max(1, round(share * q)))


def propose_policy(
    clf: Classifier,
    model: ModelRef | None,
    source: Source,
    cfg: QueryConfig,
    engine: EngineConfig,
    seed: tuple[int, ...],
    progress: bool = False,
    *,
    labeled_count: int = 0,
    labeled_features: np.ndarray | None = None,
) -> ProposedQuery:
    """The query of `cfg.query_size` rows: cold start or strategy, plus the random share.

    `labeled_count` decides the cold start; `labeled_features (l, F)` (the model's features of
    the labeled posts, when the caller has them) count towards cluster coverage."""
    main = (
        cold_start(clf, model, source, cfg, engine, seed, labeled_features)
        if cfg.cold(labeled_count)
        else propose(clf, model, source, cfg, engine, seed, progress)
    )
    r = control_count(cfg.query_size, cfg.random_share)
    if r == 0:
        return main
    plain = replace(cfg, strategy="random", diversity=None, balance=False, sampling="top")
    ctrl = propose(
        clf, model, source, replace(plain, query_size=r), engine, (*seed, CONTROL_STREAM)
    )
    return combine(ctrl, main, cfg.query_size)


def cold_start(
    clf: Classifier,
    model: ModelRef | None,
    source: Source,
    cfg: QueryConfig,
    engine: EngineConfig,
    seed: tuple[int, ...],
    labeled_features: np.ndarray | None,
) -> ProposedQuery:
    """Typicality picks among a uniform sample of the eligible posts (features kept)."""
    t0 = time.perf_counter()
    sample_cfg = replace(cfg, strategy="random", diversity="kmeans", balance=False, sampling="top")
    task = Task(source, sample_cfg, cfg.cold_start_sample, (*seed, COLD_STREAM))
    scored = run_scoring(clf, model, task, engine).distinct()
    t1 = time.perf_counter()
    q = min(cfg.query_size, len(scored.rows))
    pos = np.zeros(0, np.int64)
    if q:
        rng = np.random.default_rng([*seed, COLD_STREAM])
        pos = typical_picks(scored.features, q, rng, labeled_features)
    t2 = time.perf_counter()
    counts = _counts(scored, clf.classes)
    return _chosen(scored, pos, np.full(q, TYPICAL), t1 - t0, t2 - t1, counts)


def combine(ctrl: ProposedQuery, main: ProposedQuery, q: int) -> ProposedQuery:
    """Control rows first, then the policy's rows that are not among them, `q` in all."""
    taken = set(zip(ctrl.parts.tolist(), ctrl.indices.tolist(), strict=True))
    rest = [
        i
        for i, key in enumerate(zip(main.parts.tolist(), main.indices.tolist(), strict=True))
        if key not in taken
    ][: max(q - len(taken), 0)]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(ctrl, name), getattr(main, name)[rest]])

    reasons = np.concatenate([np.full(len(ctrl.indices), CONTROL), main.reasons[rest]])
    timings = {k: main.timings.get(k, 0.0) + ctrl.timings.get(k, 0.0) for k in main.timings}
    return ProposedQuery(
        cat("indices"), cat("parts"), cat("scores"), cat("predicted"), cat("confidence"),
        reasons.astype(str), timings, main.counts,
    )  # fmt: skip


def propose_in_memory(
    clf: Classifier,
    views: Views,
    labeled: np.ndarray,
    cfg: QueryConfig,
    rng: np.random.Generator,
    chunk_rows: int = 16_384,
    engine: EngineConfig | None = None,
) -> ProposedQuery:
    """`propose_policy` over in-memory views (the simulator): `labeled (n,) bool` rows are
    not eligible and count (with their features) towards the cold start's coverage.
    `engine` defaults to `EngineConfig()` (this process, the bf16 prefilter where fast)."""
    seed = tuple(int(x) for x in rng.integers(0, 2**32, 2))
    source = MemorySource(views, ~labeled, chunk_rows)
    feats = (
        clf.predict(views.take(np.flatnonzero(labeled)), with_features=True).features
        if cfg.cold(int(labeled.sum()))
        else None
    )
    return propose_policy(
        clf, None, source, cfg, engine or EngineConfig(), seed,
        labeled_count=int(labeled.sum()), labeled_features=feats,
    )  # fmt: skip
