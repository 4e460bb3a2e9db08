"""Simulated assessors for the offline simulation: per-assessor accuracy, and wrong answers
drawn from a confusion that favours similar classes.

Similarity of two classes is the cosine similarity of their mean embeddings (each view's class
centroid, the views side by side; a missing view is left out of the mean). A wrong answer for
true class `i` is class `j ≠ i` with probability ∝ exp(sim(i, j) / temperature): at the default
temperature 0.05 most mistakes go to the two or three nearest classes, as a hurried person's
do (a dress taken for a knit, not for a jacket), which is harder for aggregation than uniform
noise. `CrowdOracle` plays the team inside the simulation: each asked row gets `overlap`
answers from distinct assessors drawn at random, and the labels it hands back are the
aggregation of every answer given so far.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from batch_jobs.aggregation import Votes, aggregate_votes
from model.data import Views
from model.training import LabeledViews


def class_centroids(views: Views, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """`(C, di + dt)`: per class, the mean of each view over the rows that have it."""
    parts = []
    for x, has in ((views.image, views.image_mask), (views.text, views.text_mask)):
        if x is None or has is None:
            continue
        cent = np.zeros((n_classes, x.shape[1]), np.float64)
        for c in range(n_classes):
            rows = (labels == c) & has
            if rows.any():
                cent[c] = x[rows].mean(0)
        parts.append(cent)
    return np.concatenate(parts, axis=1)


def similar_class_confusion(centroids: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """`(C, C)` row-stochastic, zero diagonal: P(wrong answer j | true i) ∝ exp(cos(i, j) / t)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    logits = unit @ unit.T / temperature  # (C, C)
    np.fill_diagonal(logits, -np.inf)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


@dataclass(frozen=True)
class SimulatedTeam:
    """Assessor `a` answers the truth with probability `accuracies[a]`, else a draw from
    `confusion[true]`."""

    accuracies: tuple[float, ...]
    confusion: np.ndarray  # (C, C)

    def __post_init__(self) -> None:
        if not self.accuracies or not all(0.0 <= a <= 1.0 for a in self.accuracies):
            raise ValueError("accuracies must be a non-empty list of numbers in [0, 1]")

    def answer(
        self, true: np.ndarray, assessors: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """`(m,)` answers of `assessors (m,)` for items whose true class is `true (m,)`."""
        acc = np.asarray(self.accuracies)[assessors]  # (m,)
        right = rng.random(len(true)) < acc
        cdf = np.cumsum(self.confusion[true], axis=1)  # (m, C)
        wrong = (rng.random((len(true), 1)) < cdf).argmax(1)
        return np.where(right, true, wrong).astype(np.int64)

    def assign(self, n: int, overlap: int, rng: np.random.Generator) -> np.ndarray:
        """`(n, overlap)`: distinct assessors per item, drawn at random."""
        k = len(self.accuracies)
        if not 1 <= overlap <= k:
            raise ValueError(f"overlap {overlap} must be in [1, {k}] (the team's size)")
        return np.argsort(rng.random((n, k)), axis=1)[:, :overlap]


class CrowdOracle:
    """The team inside the simulation: collects answers, hands back aggregated labels."""

    def __init__(
        self,
        team: SimulatedTeam,
        truth: np.ndarray,
        overlap: int,
        method: str,
        rng: np.random.Generator,
    ) -> None:
        self.team, self.truth, self.overlap, self.method, self.rng = (
            team,
            truth,
            overlap,
            method,
            rng,
        )
        self.items = np.zeros(0, np.int64)
        self.workers = np.zeros(0, np.int64)
        self.answers = np.zeros(0, np.int64)
        self.n_classes = team.confusion.shape[0]

    def copy(self) -> CrowdOracle:
        """An independent oracle with the same answers so far (and generator state)."""
        return copy.deepcopy(self)

    def ask(self, rows: np.ndarray) -> None:
        """`overlap` answers for each of `rows (k,)` (indices into `truth`)."""
        who = self.team.assign(len(rows), self.overlap, self.rng)  # (k, overlap)
        items = np.repeat(rows, self.overlap)
        workers = who.reshape(-1)
        answers = self.team.answer(self.truth[items], workers, self.rng)
        self.items = np.concatenate([self.items, items])
        self.workers = np.concatenate([self.workers, workers])
        self.answers = np.concatenate([self.answers, answers])

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """`(rows (k,), labels (k,))` over every asked row; MV ties are broken at random."""
        votes = Votes(self.items, self.workers, self.answers)
        agg = aggregate_votes(votes, self.n_classes, self.method)
        labels = agg.labels.copy()
        for k in np.flatnonzero(agg.tie):
            mine = self.answers[self.items == agg.items[k]]
            counts = np.bincount(mine, minlength=self.n_classes)
            labels[k] = self.rng.choice(np.flatnonzero(counts == counts.max()))
        return agg.items, labels

    def label_accuracy(self) -> float:
        """Share of asked rows whose aggregated label is the true class."""
        rows, labels = self.labels()
        return float((labels == self.truth[rows]).mean()) if len(rows) else 0.0

    def grown(self, pool: LabeledViews) -> LabeledViews:
        """The asked rows of `pool` with their aggregated labels (not the true ones)."""
        rows, labels = self.labels()
        return LabeledViews(pool.views.take(rows), labels)


def make_oracle(
    accuracies: tuple[float, ...],
    overlap: int,
    method: str,
    pool: LabeledViews,
    n_classes: int,
    seed: int,
    temperature: float = 0.05,
) -> CrowdOracle | None:
    """The simulated team for one seed's pool (None: no assessors, the true labels answer)."""
    if not accuracies:
        return None
    confusion = similar_class_confusion(
        class_centroids(pool.views, pool.labels, n_classes), temperature
    )
    team = SimulatedTeam(tuple(accuracies), confusion)
    return CrowdOracle(team, pool.labels, overlap, method, np.random.default_rng([seed, 7]))
