"""Stopping signals: when more labels stop paying, from arrays the loop already has.

- `stability`: the share of posts whose predicted class did not change between two
  consecutive models (label-free; Bloodgood & Vijay-Shanker 2009 stop once it stays ≥ ~0.99);
- `gain_per_1k`: accuracy gained per 1,000 labels over the last `window` evaluated steps.
"""

from __future__ import annotations

import numpy as np

from postclf_errors import InvalidInputError


def stability(before: np.ndarray, after: np.ndarray) -> float:
    """Fraction of rows predicted alike by two models. `(n,)`, `(n,)` class ids → [0, 1]."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 1:
        raise InvalidInputError(f"shapes {before.shape} and {after.shape} differ", "predictions")
    return float((before == after).mean()) if before.size else 1.0


def gain_per_1k(labels: np.ndarray, accuracy: np.ndarray, window: int = 5) -> float | None:
    """Least-squares slope of accuracy vs labels over the last `window + 1` points, per 1,000
    labels. None with fewer than two points."""
    x, y = np.asarray(labels, np.float64)[-(window + 1) :], np.asarray(accuracy)[-(window + 1) :]
    if x.shape[0] < 2 or np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0] * 1000.0)


def stop_suggested(
    stabilities: list[float], threshold: float = 0.99, patience: int = 3
) -> int | None:
    """Index of the first step after which stability stayed ≥ `threshold` for `patience`
    consecutive steps (the point to stop), or None."""
    run = 0
    for i, s in enumerate(stabilities):
        run = run + 1 if s >= threshold else 0
        if run >= patience:
            return i
    return None
