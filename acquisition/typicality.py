"""Typicality cold start (TypiClust, Hacohen et al. 2022): when few labels exist, ask for the
most typical post of each cluster nobody has labeled yet, not for the most uncertain ones.

Cluster the candidates' features (plus the labeled rows', when given) into `labeled + q`
clusters with FAISS k-means; visit clusters by (fewest labeled members, most members) and take
each one's most typical candidate: the highest inverse mean distance to its `k_nn` nearest
neighbours inside the cluster (the densest point). numpy/FAISS only, indices out.
"""

from __future__ import annotations

import numpy as np

from acquisition.diversity import kmeans_labels, normalise
from postclf_errors import InvalidInputError

REASON = "cold-start:typical"


def typicality(x: np.ndarray, k_nn: int, max_ref: int = 2048) -> np.ndarray:
    """`1 / mean distance to the k_nn nearest other rows` (rows of one cluster). `(m, F)` →
    `(m,)`; a lone row gets 0. Neighbours come from the first `max_ref` rows (callers pass
    rows in random order), so memory stays `O(m · max_ref)`."""
    m = x.shape[0]
    if m < 2:
        return np.zeros(m)
    ref = x[:max_ref]  # (r, F)
    sq, sr = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", ref, ref)
    d2 = np.maximum(sq[:, None] + sr[None, :] - 2.0 * (x @ ref.T), 0.0)  # (m, r)
    d2[np.arange(min(m, ref.shape[0])), np.arange(min(m, ref.shape[0]))] = np.inf  # not itself
    k = min(k_nn, ref.shape[0] - 1)
    near = np.partition(d2, k - 1, axis=1)[:, :k]  # (m, k) the k smallest
    return 1.0 / (np.sqrt(near).mean(axis=1) + 1e-12)


def typical_picks(
    features: np.ndarray,
    q: int,
    rng: np.random.Generator,
    labeled_features: np.ndarray | None = None,
    k_nn: int = 20,
) -> np.ndarray:
    """`q` candidate rows `(q,)` (into `features (n, F)`), most typical of the least-covered
    clusters first. `labeled_features (l, F)` count towards coverage and are never returned."""
    n = features.shape[0]
    if q < 1 or q > n:
        raise InvalidInputError(f"need 1 <= q <= {n} candidates, got {q}", "q")
    lab = np.zeros((0, features.shape[1]), np.float32)
    if labeled_features is not None:
        lab = np.asarray(labeled_features, np.float32)
    x = normalise(np.concatenate([features, lab]))  # (n + l, F)
    k = min(x.shape[0], lab.shape[0] + q)
    labels = kmeans_labels(x, k, rng, nredo=3)  # (n + l,): restarts, a cold start is rare
    cand_lab, lab_lab = labels[:n], labels[n:]
    covered = np.bincount(lab_lab, minlength=k)  # (k,) labeled members
    size = np.bincount(cand_lab, minlength=k)  # (k,) candidate members
    order = np.lexsort((-size, covered))  # fewest labeled, then largest
    picks: list[int] = []
    for c in order[size[order] > 0][:q]:
        rows = rng.permutation(np.flatnonzero(cand_lab == c))  # random neighbour reference
        picks.append(int(rows[np.argmax(typicality(x[rows], k_nn))]))
    if len(picks) < q:  # fewer non-empty clusters than q: fill at random
        rest = np.setdiff1d(np.arange(n), picks)
        picks += rng.choice(rest, q - len(picks), replace=False).tolist()
    return np.asarray(picks, np.int64)
