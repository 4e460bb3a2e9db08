"""Selection stage building blocks: the candidate set, a ranking, and the base top-score stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

TOP_SCORE = "top-score"


@dataclass(frozen=True)
class Candidates:
    """The top `m` rows by score, best first (ties in random order).

    `rows (m,)` index the caller's arrays; `scores (m,)`, `features (m, F)`, `predicted (m,)`
    are those rows' values. A position 0..m-1 is therefore also a score rank (0 = best).
    """

    rows: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    predicted: np.ndarray


@dataclass(frozen=True)
class Ranked:
    """A preference order over candidates: `order (k,)` positions into `Candidates`, most
    wanted first, and `reasons (k,)` why each is there."""

    order: np.ndarray
    reasons: np.ndarray


class Stage(Protocol):
    """One selection stage: rank candidates for a query of `q` rows."""

    def rank(self, cands: Candidates, q: int, rng: np.random.Generator) -> Ranked: ...


class TopScore:
    """The base stage: candidates in score order (they arrive sorted, ties already shuffled)."""

    def rank(self, cands: Candidates, q: int, rng: np.random.Generator) -> Ranked:
        m = cands.rows.shape[0]
        return Ranked(np.arange(m), np.full(m, TOP_SCORE, dtype=object))


def top_candidates(
    scores: np.ndarray, m: int, rng: np.random.Generator, key: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the `m` highest scores, best first; equal scores in random order.

    The order is by (score descending, `key` ascending); `key (n,)` defaults to uniform draws
    from `rng` for every row (a streaming scorer passes the keys it drew chunk by chunk, which
    makes its top-m exactly this one). O(n) partition plus a sort of `m` rows. → `(m,)`.
    """
    n = scores.shape[0]
    if key is None:
        key = np.asarray(rng.random(n))  # (n,) tie-break; drawn for every row: fixed rng use
    if m < n:
        thr = np.partition(scores, n - m)[n - m]  # m-th largest score
        above = np.flatnonzero(scores > thr)
        at = np.flatnonzero(scores == thr)
        at = at[np.argsort(key[at], kind="stable")[: m - above.shape[0]]]
        rows = np.concatenate([above, at])
    else:
        rows = np.arange(n)
    return rows[np.lexsort((key[rows], -scores[rows]))].astype(np.int64)
