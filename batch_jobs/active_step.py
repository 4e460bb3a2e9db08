"""One active-learning step, shared by the nightly job and the simulation (no second loop).

`propose_query`: score the eligible pool with a strategy and select a diverse, balanced batch.
`fold_in`: train on the grown labeled set (active phase when a parent model exists).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acquisition.scores import STRATEGIES
from acquisition.selection import candidate_count, select_candidates
from acquisition.stages import Candidates
from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.runners import ModelRef, Task, run_scoring
from batch_jobs.scoring import MemorySource, Scored, Source
from model.classifier import Classifier
from model.data import Views
from model.training import EpochHook, LabeledViews, TrainConfig, finetune_active, train_passive

__all__ = ["ProposedQuery", "QueryConfig", "fold_in", "propose", "propose_query"]

STAGE_STREAM = 0x5E1EC7  # seeds the selection stages' generator, apart from the chunks'


@dataclass(frozen=True)
class ProposedQuery:
    """Chosen rows, best first, with why each was kept. A row is `(parts[i], indices[i])`:
    a pool segment and a row in it, or (0, row) for in-memory views."""

    indices: np.ndarray  # (q,) int64
    parts: np.ndarray  # (q,) int64
    scores: np.ndarray  # (q,) strategy score, higher = asked first
    predicted: np.ndarray  # (q,) predicted class id
    confidence: np.ndarray  # (q,) probability of the predicted class
    reasons: np.ndarray  # (q,) str: which stage kept the row
    timings: dict[str, float] = field(default_factory=dict)  # seconds: scoring, selection
    counts: dict[str, Any] = field(default_factory=dict)  # scored, skipped, histogram, scores


def propose(
    clf: Classifier,
    model: ModelRef | None,
    source: Source,
    cfg: QueryConfig,
    engine: EngineConfig,
    seed: tuple[int, ...],
    progress: bool = False,
) -> ProposedQuery:
    """Stream-score `source`, then diversity and balance on the best `candidate_factor·q`.

    A pool with fewer eligible posts than `query_size` gives all of them. Same seed, same
    query, whatever the engine, worker count or chunk order."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; known: {sorted(STRATEGIES)}")
    t0 = time.perf_counter()
    m = candidate_count(1 << 62, cfg.query_size, cfg.candidate_factor, cfg.diversity, cfg.balance)
    scored = run_scoring(
        clf, model, Task(source, cfg, m, seed, engine.prefilter), engine, progress
    ).distinct()
    t1 = time.perf_counter()
    q = min(cfg.query_size, len(scored.rows))
    counts = _counts(scored, clf.classes)
    if q == 0:
        return _chosen(scored, np.zeros(0, np.int64), np.zeros(0, str), t1 - t0, 0.0, counts)
    cands = Candidates(
        np.arange(len(scored.rows)), scored.scores, scored.features, scored.predicted
    )
    stage_rng = np.random.default_rng([*seed, STAGE_STREAM])
    sel = select_candidates(cands, q, stage_rng, diversity=cfg.diversity, balance=cfg.balance)
    return _chosen(scored, sel.indices, sel.reasons, t1 - t0, time.perf_counter() - t1, counts)


def _counts(scored: Scored, classes: list[str]) -> dict[str, Any]:
    return {
        "scored": scored.scored,
        "skipped": dict(scored.skipped),
        "predicted_histogram": dict(zip(classes, scored.histogram.tolist(), strict=True)),
        "score_summary": scored.summary(),
        "worker_seconds": dict(scored.seconds),  # summed over chunks (and workers)
    }


def _chosen(
    s: Scored, pos: np.ndarray, reasons: np.ndarray, t_score: float, t_sel: float, counts: dict
) -> ProposedQuery:
    return ProposedQuery(
        indices=s.rows[pos], parts=s.part[pos], scores=s.scores[pos], predicted=s.predicted[pos],
        confidence=s.confidence[pos], reasons=reasons,
        timings={"scoring": t_score, "selection": t_sel}, counts=counts,
    )  # fmt: skip


def propose_query(
    clf: Classifier,
    views: Views,
    eligible: np.ndarray,
    cfg: QueryConfig,
    rng: np.random.Generator,
    chunk_rows: int = 16_384,
) -> ProposedQuery:
    """`propose` over in-memory views (the simulator): rows among `eligible (n,) bool`."""
    seed = tuple(int(x) for x in rng.integers(0, 2**32, 2))
    return propose(clf, None, MemorySource(views, eligible, chunk_rows), cfg, EngineConfig(), seed)


def fold_in(
    parent: Classifier | None,
    labeled: LabeledViews,
    val: LabeledViews | None,
    classes: list[str],
    cfg: TrainConfig,
    on_epoch: EpochHook | None = None,
) -> Classifier:
    """Active phase (fine-tune `parent`, BN frozen) or, with no parent, the passive phase
    (`on_epoch`: progress of a passive training)."""
    if parent is None:
        return train_passive(labeled, val, classes, cfg, on_epoch)
    return finetune_active(parent, labeled, val, cfg)
