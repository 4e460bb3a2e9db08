"""One active-learning step, shared by the nightly job and the simulation (no second loop).

`propose_query`: score the eligible pool with a strategy and select a diverse, balanced batch.
`fold_in`: train on the grown labeled set (active phase when a parent model exists).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from acquisition.scores import STRATEGIES
from acquisition.selection import select_query
from model.classifier import Classifier
from model.data import Views
from model.training import LabeledViews, TrainConfig, finetune_active, train_passive


@dataclass(frozen=True)
class QueryConfig:
    """How a query is chosen."""

    strategy: str = "margin"  # random | least_confidence | margin | entropy | bald
    query_size: int = 20
    candidate_factor: int = 10  # diversity/balance pick from the top factor·q by score
    diversity: str | None = None  # None | "kmeans" | "kcenter"
    balance: bool = False  # cap each predicted class at its share of the query
    mc_samples: int = 20  # T for MC-Dropout strategies (bald)


@dataclass(frozen=True)
class ProposedQuery:
    """Chosen rows (indices into the scored views), best first, with why each was kept."""

    indices: np.ndarray  # (q,) int64
    scores: np.ndarray  # (q,) strategy score, higher = asked first
    predicted: np.ndarray  # (q,) predicted class id
    confidence: np.ndarray  # (q,) probability of the predicted class
    reasons: np.ndarray  # (q,) str: which stage kept the row
    timings: dict[str, float] = field(default_factory=dict)  # seconds: scoring, selection


def score_pool(
    clf: Classifier, views: Views, cfg: QueryConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(scores (n,), probs (n, C), features (n, F))` for every row of `views`."""
    strategy = STRATEGIES[cfg.strategy]
    need_features = cfg.diversity is not None
    pred = clf.predict(views, with_features=need_features)
    if strategy.needs_mc:
        scores = strategy.score(clf.predict_mc(views, cfg.mc_samples, rng), rng)
    else:
        scores = strategy.score(pred.probs, rng)
    feats = pred.features if pred.features is not None else np.empty((len(views), 0), np.float32)
    return scores, pred.probs, feats


def propose_query(
    clf: Classifier,
    views: Views,
    eligible: np.ndarray,
    cfg: QueryConfig,
    rng: np.random.Generator,
) -> ProposedQuery:
    """Pick `cfg.query_size` rows among `eligible (n,) bool` (unlabeled, not already queried)."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; known: {sorted(STRATEGIES)}")
    rows = np.flatnonzero(eligible)
    t0 = time.perf_counter()
    scores, probs, feats = score_pool(clf, views.take(rows), cfg, rng)
    t1 = time.perf_counter()
    predicted = probs.argmax(1)
    sel = select_query(
        scores,
        feats,
        predicted,
        cfg.query_size,
        rng,
        candidate_factor=cfg.candidate_factor,
        diversity=cfg.diversity,
        balance=cfg.balance,
        n_classes=probs.shape[1],
    )
    t2 = time.perf_counter()
    local = sel.indices
    return ProposedQuery(
        indices=rows[local],
        scores=scores[local],
        predicted=predicted[local],
        confidence=probs[local, predicted[local]],
        reasons=sel.reasons,
        timings={"scoring": t1 - t0, "selection": t2 - t1},
    )


def fold_in(
    parent: Classifier | None,
    labeled: LabeledViews,
    val: LabeledViews | None,
    classes: list[str],
    cfg: TrainConfig,
) -> Classifier:
    """Active phase (fine-tune `parent`, BN frozen) or, with no parent, the passive phase."""
    if parent is None:
        return train_passive(labeled, val, classes, cfg)
    return finetune_active(parent, labeled, val, cfg)
