"""Class-balance stage: cap each predicted class at an equal share of the query, fill by rank."""

from __future__ import annotations

import math

import numpy as np

from acquisition.stages import Candidates, Ranked, Stage

FILL = "balance:fill"


def class_cap(q: int, n_present: int) -> int:
    """`ceil(q / classes predicted among the candidates)`: an equal share per present class.

    Counting only present classes keeps the cap reachable (a class no candidate is predicted
    as cannot use its share), and the ceiling lets q be filled when q is not a multiple.
    """
    return math.ceil(q / max(n_present, 1))


def rank_within_class(classes: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows share its class (0 for a class's first). `(k,)`."""
    by_class = np.argsort(classes, kind="stable")  # (k,) grouped by class, order kept
    sorted_cls = classes[by_class]
    starts = np.flatnonzero(np.r_[True, sorted_cls[1:] != sorted_cls[:-1]])  # group starts
    sizes = np.diff(np.r_[starts, classes.shape[0]])
    run = np.arange(classes.shape[0]) - np.repeat(starts, sizes)  # (k,) rank inside the group
    within = np.empty_like(run)
    within[by_class] = run
    return within


class Balance:
    """Wraps a stage: walk its ranking and keep rows while their predicted class is under the
    cap; rows the inner stage would have chosen keep its reason, later ones are "balance:fill".
    If the capped walk cannot fill `q` (too few classes), the skipped rows fill it in order."""

    def __init__(self, inner: Stage) -> None:
        self.inner = inner

    def rank(self, cands: Candidates, q: int, rng: np.random.Generator) -> Ranked:
        ranked = self.inner.rank(cands, q, rng)
        classes = cands.predicted[ranked.order]  # (k,)
        cap = class_cap(q, np.unique(classes).shape[0])
        keep = rank_within_class(classes) < cap  # (k,) under the cap
        order = np.concatenate([np.flatnonzero(keep), np.flatnonzero(~keep)])
        inner_choice = (order < q) & keep[order]  # the inner stage's pick, within the cap
        reasons = np.where(inner_choice, ranked.reasons[order], FILL).astype(object)
        return Ranked(ranked.order[order], reasons)
