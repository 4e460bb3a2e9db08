"""Diversity stage: cluster the candidates and keep the best-scored member of each cluster.

FAISS k-means (GPU when `faiss.get_num_gpus() > 0`, CPU otherwise) or greedy k-center, both on
L2-normalised features, so cosine geometry decides what "similar" means.
"""

from __future__ import annotations

import faiss
import numpy as np

from acquisition.stages import Candidates, Ranked, Stage

FILL = "diversity:fill"


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero). `(m, F)` → `(m, F)` float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (m, 1)
    return x / np.maximum(norm, np.float32(1e-12))


def kmeans_labels(
    x: np.ndarray, k: int, rng: np.random.Generator, niter: int = 20, nredo: int = 1
) -> np.ndarray:
    """FAISS k-means into `k` clusters, seeded from `rng` (best of `nredo` restarts).
    `(m, F)` → labels `(m,)` int64."""
    if k == 1:
        return np.zeros(x.shape[0], np.int64)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=int(rng.integers(2**31 - 1)),
        gpu=faiss.get_num_gpus() > 0,
        min_points_per_centroid=1,  # q clusters of ~candidate_factor points each is intended
        max_points_per_centroid=1 << 20,  # cluster every candidate, no subsampling
        verbose=False,
    )
    km.train(x)
    _, labels = km.index.search(x, 1)  # (m, 1) nearest centroid
    return labels[:, 0].astype(np.int64)


def kcenter_labels(x: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center from row 0 (the best-scored): each step adds the row farthest from all
    centers so far (stopping early if all rows coincide with centers). Returns each row's
    nearest center as a label 0..k-1. `(m, F)` → `(m,)`.

    One `(m, F)` mat-vec per center: O(m·k·F), bound by memory bandwidth.
    """
    sq = np.einsum("ij,ij->i", x, x)  # (m,)
    labels = np.zeros(x.shape[0], np.int64)
    dist = np.maximum(sq + sq[0] - 2.0 * (x @ x[0]), 0.0)  # (m,) squared distance to nearest
    for j in range(1, k):
        c = int(np.argmax(dist))  # ties → lowest position = best score
        if dist[c] <= 0.0:
            break  # every row coincides with a center: fewer than k distinct clusters
        d = np.maximum(sq + sq[c] - 2.0 * (x @ x[c]), 0.0)  # (m,)
        closer = d < dist
        closer[c] = True
        labels[closer] = j
        dist = np.minimum(dist, d)
        dist[c] = 0.0
    return labels


def best_per_cluster(pos: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The lowest (best-scored) position in each cluster, ascending. `(k,)`, `(k,)` → `(c,)`."""
    by_pos = np.argsort(pos, kind="stable")
    _, first = np.unique(labels[by_pos], return_index=True)
    return np.sort(pos[by_pos[first]])


class Diversity:
    """Wraps a stage: cluster its candidates into `q` groups, best-scored per group first, then
    the rest by score (so any empty cluster is filled by score)."""

    METHODS = ("kmeans", "kcenter")

    def __init__(self, inner: Stage, method: str) -> None:
        if method not in self.METHODS:
            raise ValueError(f"unknown diversity method {method!r}; known: {self.METHODS}")
        self.inner, self.method = inner, method

    def rank(self, cands: Candidates, q: int, rng: np.random.Generator) -> Ranked:
        if cands.features.shape[1] == 0:
            raise ValueError("diversity needs features (n, F) with F > 0")
        pos = np.sort(self.inner.rank(cands, q, rng).order)  # (k,) positions, best score first
        x = normalise(cands.features[pos])  # (k, F)
        k = min(q, pos.shape[0])
        labels = kmeans_labels(x, k, rng) if self.method == "kmeans" else kcenter_labels(x, k)
        reps = best_per_cluster(pos, labels)  # (c,) c <= k
        rest = np.setdiff1d(pos, reps)  # ascending = by score
        reasons = np.array(
            [f"diversity:{self.method} cluster best"] * reps.shape[0] + [FILL] * rest.shape[0],
            dtype=object,
        )
        return Ranked(np.concatenate([reps, rest]), reasons)
