"""Uncertainty scores from prediction arrays: probs `(n, C)` or MC samples `(n, T, C)` → `(n,)`.

Higher = ask first. Each score is a measure only; choosing rows (top-k, tie-break, diversity,
balance) is the selector's job (`acquisition.selection`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from acquisition import committee
from postclf_errors import InvalidInputError

_EPS = np.float64(1e-12)  # log(0) guard: 0·log(0) is taken as 0


def _check(arr: np.ndarray, ndim: int, field: str) -> np.ndarray:
    """The shape contract: `ndim`-D, at least one class, finite. Returns float64."""
    a = np.asarray(arr)
    if a.ndim != ndim:
        kind = "(n, C)" if ndim == 2 else "(n, T, C)"
        raise InvalidInputError(f"expected a {ndim}-D array {kind}, got shape {a.shape}", field)
    if a.shape[-1] < 1 or (ndim == 3 and a.shape[1] < 1):
        raise InvalidInputError(f"empty class or sample axis in shape {a.shape}", field)
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise InvalidInputError("contains NaN or Inf", field)
    return a


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis. `(..., C)` → `(...)`."""
    return -(p * np.log(np.maximum(p, _EPS))).sum(axis=-1)


def random_score(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform random scores `(n,)` (the passive baseline); the values only depend on `rng`."""
    p = _check(probs, 2, "probs")
    return np.asarray(rng.random(p.shape[0]), dtype=np.float64)


def least_confidence(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`1 - max_c p` per row. `(n, C)` → `(n,)`."""
    p = _check(probs, 2, "probs")
    return 1.0 - p.max(axis=1)


def margin(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`-(p1 - p2)`, the two largest probabilities per row (one partition, no sort). → `(n,)`."""
    p = _check(probs, 2, "probs")
    if p.shape[1] < 2:
        return np.full(p.shape[0], -1.0)  # one class: nothing is uncertain
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]  # (n, 2): [p2, p1]
    return top2[:, 0] - top2[:, 1]


def entropy(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Predictive entropy `H(p)` in nats. `(n, C)` → `(n,)`."""
    return _entropy(_check(probs, 2, "probs"))


def bald(mc: np.ndarray, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    """Mutual information `H(mean_T p) - mean_T H(p)` over MC samples. `(n, T, C)` → `(n,)`.

    Zero when all samples agree; clipped at 0 against round-off. Runs in row chunks so the
    float64 temporaries stay small however large the pool.
    """
    mc = np.asarray(mc)
    if mc.ndim != 3:
        raise InvalidInputError(f"expected a 3-D array (n, T, C), got shape {mc.shape}", "mc_probs")
    out = np.empty(mc.shape[0], np.float64)
    for start in range(0, mc.shape[0], chunk):
        p = _check(mc[start : start + chunk], 3, "mc_probs")  # (b, T, C)
        mi = _entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1)  # (b,)
        out[start : start + chunk] = np.maximum(mi, 0.0)
    if mc.shape[0] == 0:
        _check(mc, 3, "mc_probs")
    return out


@dataclass(frozen=True)
class Strategy:
    """A named score. Its input: probabilities `(n, C)`, MC samples `(n, T, C)` when
    `needs_mc`, or every head's probabilities `(n, K, C)` when `needs_heads`
    (`acquisition.committee`). `floor` is the lowest score possible (power sampling raises
    `score - floor` to a power, `acquisition.stochastic`)."""

    name: str
    needs_mc: bool
    score: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    needs_heads: bool = False
    floor: float = 0.0
    reads_model: bool = True  # False: the score reads only the row count (random)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("random", False, random_score, reads_model=False),
        Strategy("least_confidence", False, least_confidence),
        Strategy("margin", False, margin, floor=-1.0),
        Strategy("entropy", False, entropy),
        Strategy("bald", True, bald),
        Strategy("vote_entropy", False, committee.vote_entropy, needs_heads=True),
        Strategy("kl_committee", False, committee.kl_to_consensus, needs_heads=True),
        Strategy("fused_conflict", False, committee.fused_conflict, needs_heads=True),
        Strategy(
            "margin_committee", False, committee.margin_committee, needs_heads=True, floor=-1.0
        ),
    )
}
