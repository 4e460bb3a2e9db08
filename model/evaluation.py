"""The one evaluator: accuracy, macro-F1, per-class and rare-class F1 from prediction arrays.

Retraining (the gate), the simulator and the benches all call `scores` (arrays) or
`evaluate_model` (a classifier on labeled views), so a metric means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from postclf_errors import InvalidInputError

if TYPE_CHECKING:  # training imports this module: no runtime import back
    from model.classifier import Classifier
    from model.training import LabeledViews


@dataclass(frozen=True)
class Metrics:
    """`per_class_f1 (C,)` is NaN for a class absent from both predictions and truth; the
    macro averages skip NaN (0.0 when every class is NaN, i.e. no rows)."""

    accuracy: float
    macro_f1: float
    rare_f1: float
    per_class_f1: np.ndarray
    n: int

    def to_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "rare_f1": self.rare_f1,
            "n": self.n,
        }


def per_class_f1(pred: np.ndarray, true: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 of each class `(C,)` from `pred (n,)`, `true (n,)` class ids; NaN where tp+fp+fn = 0."""
    pred, true = _check(pred, true, n_classes)
    tp = np.bincount(true[pred == true], minlength=n_classes).astype(np.float64)  # (C,)
    n_pred = np.bincount(pred, minlength=n_classes)  # (C,) tp + fp
    n_true = np.bincount(true, minlength=n_classes)  # (C,) tp + fn
    denom = (n_pred + n_true).astype(np.float64)  # 2tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else 0.0


def scores(
    pred: np.ndarray, true: np.ndarray, n_classes: int, rare: np.ndarray | None = None
) -> Metrics:
    """Metrics of `pred (n,)` against `true (n,)`; `rare (k,)` class ids for the rare-class F1
    (macro-F1 over those classes; equal to macro-F1 when `rare` is None)."""
    pred, true = _check(pred, true, n_classes)
    f1 = per_class_f1(pred, true, n_classes)
    rare_f1 = _nanmean(f1[np.asarray(rare, np.int64)]) if rare is not None else _nanmean(f1)
    acc = float((pred == true).mean()) if true.size else 0.0
    return Metrics(acc, _nanmean(f1), rare_f1, f1, int(true.size))


def evaluate_model(clf: Classifier, data: LabeledViews, rare: np.ndarray | None = None) -> Metrics:
    """`scores` of a classifier's served predictions on labeled views (`predict().probs`)."""
    pred = clf.predict(data.views).probs.argmax(1)  # (n,)
    return scores(pred, data.labels, len(clf.classes), rare)


def rare_classes(train_labels: np.ndarray, n_classes: int, fraction: float) -> np.ndarray:
    """The `ceil(fraction·C)` classes with the fewest training rows (ties by class id). `(k,)`."""
    if not 0.0 < fraction <= 1.0:
        raise InvalidInputError(f"must be in (0, 1], got {fraction}", "rare_fraction")
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=n_classes)
    n_rare = max(1, int(np.ceil(n_classes * fraction)))
    return np.argsort(counts, kind="stable")[:n_rare]


def _check(pred: np.ndarray, true: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.ndim != 1 or pred.shape != true.shape:
        raise InvalidInputError(
            f"pred {pred.shape} and true {true.shape} must be equal 1-D shapes", "pred"
        )
    for name, a in (("pred", pred), ("true", true)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise InvalidInputError(f"class ids must be integers, got {a.dtype}", name)
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise InvalidInputError(f"class ids must lie in [0, {n_classes})", name)
    return pred.astype(np.int64, copy=False), true.astype(np.int64, copy=False)
