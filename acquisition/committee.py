"""Head-disagreement scores: the trident's three heads on one post are a free committee.

Input: `head_probs (n, K, C)`, one distribution per committee member (K = 3 heads: image,
text, fused). A member not defined for a row (its view is missing) is an all-zero row; every
other row must sum to 1. Output `(n,)`, higher = ask first. A row with fewer than two members
(a post with one view has one head) cannot show disagreement: every score here is 0 for it,
so such posts are only asked through the selector's tie-break or the random control share.
"""

from __future__ import annotations

import numpy as np

from postclf_errors import InvalidInputError

_EPS = 1e-12
FIELD = "head_probs"
FUSED = 2  # index of the fused head in model.network.HEADS
BRANCHES = (0, 1)  # image, text


def members(head_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check the contract; `(probs (n, K, C) float64, present (n, K) bool)`."""
    p = np.asarray(head_probs)
    if p.ndim != 3 or p.shape[1] < 1 or p.shape[2] < 1:
        raise InvalidInputError(f"expected a 3-D array (n, K, C), got shape {p.shape}", FIELD)
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all() or (p < 0).any():
        raise InvalidInputError("contains NaN, Inf or negative values", FIELD)
    total = p.sum(axis=2)  # (n, K)
    present = total > 0.5
    if not (np.isclose(total[present], 1.0, atol=1e-3).all() and (total[~present] == 0).all()):
        raise InvalidInputError("each member row must sum to 1 (present) or be all zeros", FIELD)
    return p, present


def consensus(p: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean distribution of the present members. `(n, K, C)`, `(n, K)` → `(n, C)`."""
    count = np.maximum(present.sum(axis=1, keepdims=True), 1)  # (n, 1)
    return p.sum(axis=1) / count


def vote_entropy(head_probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Entropy (nats) of the members' hard votes (argmax per present member). → `(n,)`.

    0 when all present members vote alike; log 3 when three members vote three ways."""
    p, present = members(head_probs)
    n, _, c = p.shape
    votes = np.zeros((n, c))
    rows, ks = np.nonzero(present)
    np.add.at(votes, (rows, p[rows, ks].argmax(axis=1)), 1.0)  # (n, C) vote counts
    share = votes / np.maximum(votes.sum(axis=1, keepdims=True), 1.0)
    h = -(share * np.log(np.maximum(share, _EPS))).sum(axis=1)
    return np.where(present.sum(axis=1) >= 2, h, 0.0)


def kl_to_consensus(head_probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean over present members of KL(p_k || consensus) (the committee's Jensen-Shannon
    divergence). 0 when all members agree. → `(n,)`."""
    p, present = members(head_probs)
    mean = consensus(p, present)[:, None, :]  # (n, 1, C)
    kl = (p * (np.log(np.maximum(p, _EPS)) - np.log(np.maximum(mean, _EPS)))).sum(axis=2)
    kl = np.where(present, np.maximum(kl, 0.0), 0.0)  # (n, K)
    return kl.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def fused_conflict(head_probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean total-variation distance between the fused head and each branch head, for rows
    with the fused head and a branch; 0 otherwise. In [0, 1]. → `(n,)`."""
    p, present = members(head_probs)
    if p.shape[1] <= FUSED:
        return np.zeros(p.shape[0])
    tv = [0.5 * np.abs(p[:, FUSED] - p[:, b]).sum(axis=1) for b in BRANCHES]  # K=3: (n,) each
    has = np.stack([present[:, FUSED] & present[:, b] for b in BRANCHES], axis=1)  # (n, 2)
    total = np.where(has, np.stack(tv, axis=1), 0.0).sum(axis=1)
    return total / np.maximum(has.sum(axis=1), 1)


def margin_committee(head_probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Consensus margin `-(p1 - p2)` plus the KL disagreement: uncertain *or* contested rows
    first; a one-head row scores its own margin. In [-1, ∞). → `(n,)`."""
    p, present = members(head_probs)
    mean = consensus(p, present)  # (n, C)
    if mean.shape[1] < 2:
        return kl_to_consensus(p, rng) - 1.0
    top2 = np.partition(mean, mean.shape[1] - 2, axis=1)[:, -2:]  # (n, 2): [p2, p1]
    return top2[:, 0] - top2[:, 1] + kl_to_consensus(p, rng)
