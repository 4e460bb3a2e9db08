"""Batch selection: scores (and features, predicted classes) in, `q` row indices out.

The selector is separate from the measure (modAL): `select_query` takes the scores any
strategy produced. Stages compose by wrapping (small-text): a base stage ranks the top
`candidate_factor·q` rows by score with a random tie-break; `Diversity` (FAISS k-means or
greedy k-center) and `Balance` (a per-class cap) each wrap the stage below and re-rank its
candidates. `select_query` takes the first `q` of the outermost ranking and returns them best
first by score, each with the reason the stage that kept it gave.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acquisition.balance import Balance
from acquisition.diversity import Diversity
from acquisition.stages import Candidates, Stage, TopScore, top_candidates
from postclf_errors import InvalidInputError


@dataclass(frozen=True)
class Selection:
    """`indices (q,)` int64 into the arrays given, best first by score; `reasons (q,)` str."""

    indices: np.ndarray
    reasons: np.ndarray


def _validate(
    scores: np.ndarray,
    features: np.ndarray,
    predicted: np.ndarray,
    q: int,
    eligible: np.ndarray | None,
    n_classes: int | None,
) -> None:
    """The shape contract: `scores (n,)`, `features (n, F)`, `predicted (n,)` ints."""
    n = scores.shape[0] if scores.ndim == 1 else -1
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (n,), got shape {scores.shape}")
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"features must be ({n}, F), got shape {features.shape}")
    if predicted.shape != (n,):
        raise ValueError(f"predicted must be ({n},), got shape {predicted.shape}")
    if eligible is not None and (eligible.shape != (n,) or eligible.dtype != np.bool_):
        raise ValueError(
            f"eligible must be a ({n},) bool mask, got {eligible.dtype} {eligible.shape}"
        )
    if isinstance(q, bool) or not isinstance(q, int | np.integer) or q < 1:
        raise InvalidInputError(f"query size must be a positive integer, got {q!r}", "q")
    if n_classes is not None and n and (predicted.min() < 0 or predicted.max() >= n_classes):
        raise ValueError(f"predicted classes must lie in [0, {n_classes})")


def build_stage(diversity: str | None, balance: bool) -> Stage:
    """Wrap the base stage: diversity first (on the score-ranked candidates), balance last."""
    stage: Stage = TopScore()
    if diversity is not None:
        stage = Diversity(stage, diversity)
    if balance:
        stage = Balance(stage)
    return stage


def select_query(
    scores: np.ndarray,
    features: np.ndarray,
    predicted: np.ndarray,
    q: int,
    rng: np.random.Generator,
    *,
    candidate_factor: int = 10,
    diversity: str | None = None,
    balance: bool = False,
    n_classes: int | None = None,
    eligible: np.ndarray | None = None,
    tie_keys: np.ndarray | None = None,
) -> Selection:
    """Choose `q` rows: `scores (n,)`, `features (n, F)`, `predicted (n,)` → `Selection`.

    `diversity`: None | "kmeans" | "kcenter"; `balance`: cap each predicted class at its share.
    Both pick from the top `candidate_factor·q` rows by score. `eligible (n,)` bool restricts
    the choice (callers usually pass only eligible rows). `tie_keys (n,)` order equal scores
    (default: drawn from `rng`). Same `rng` state, same query.
    Raises InvalidInputError(field="q") when fewer than `q` rows are eligible.
    """
    scores, features, predicted = np.asarray(scores), np.asarray(features), np.asarray(predicted)
    _validate(scores, features, predicted, q, eligible, n_classes)
    if diversity not in (None, *Diversity.METHODS):
        raise ValueError(f"unknown diversity {diversity!r}; known: None, {Diversity.METHODS}")
    if candidate_factor < 1:
        raise ValueError(f"candidate_factor must be >= 1, got {candidate_factor}")
    pool = np.flatnonzero(eligible) if eligible is not None else np.arange(scores.shape[0])
    if pool.shape[0] < q:
        raise InvalidInputError(f"{pool.shape[0]} eligible rows, fewer than q={q}", "q")
    if not np.isfinite(scores[pool]).all():  # ineligible rows may hold anything
        raise InvalidInputError("scores of eligible rows contain NaN or Inf", "scores")
    m = candidate_count(pool.shape[0], q, candidate_factor, diversity, balance)
    key = None if tie_keys is None else np.asarray(tie_keys)[pool]
    local = top_candidates(scores[pool], m, rng, key)  # (m,) into pool, best first
    rows = pool[local]
    cands = Candidates(rows, scores[rows], features[rows], predicted[rows])
    return select_candidates(cands, q, rng, diversity=diversity, balance=balance)


def candidate_count(
    n: int, q: int, candidate_factor: int, diversity: str | None, balance: bool
) -> int:
    """How many top-scored rows the stages choose from: `candidate_factor·q`, or `q` alone."""
    return min(n, q * candidate_factor) if (diversity or balance) else min(n, q)


def select_candidates(
    cands: Candidates,
    q: int,
    rng: np.random.Generator,
    *,
    diversity: str | None = None,
    balance: bool = False,
) -> Selection:
    """Run the stages on `cands` (best first by score); `Selection.indices` are `cands.rows`."""
    ranked = build_stage(diversity, balance).rank(cands, q, rng)
    chosen, reasons = ranked.order[:q], ranked.reasons[:q]
    if chosen.shape[0] != q or np.unique(chosen).shape[0] != q:
        raise RuntimeError(f"selection stage returned {chosen.shape[0]} distinct rows, not {q}")
    best_first = np.argsort(chosen, kind="stable")  # candidate position = score rank
    rows = cands.rows[chosen[best_first]]
    return Selection(rows.astype(np.int64), reasons[best_first].astype(str))
