"""Plain logistic regression vs our passive trident on the reviews train split (test metrics).

Run: .venv/bin/python -m bench.baseline [--dataset reviews] [--data-dir ../shared/data]
Prints a table and writes bench/results/baseline.json.

The logistic regression (scikit-learn, lbfgs, multinomial) sees the two views concatenated
(384 + 384); a missing view is imputed with the train mean of that view (the trident uses a
mask instead), then every feature is standardised on train. Its C is picked on the val split.
The trident is `train_passive` with the default TrainConfig (val split for early stopping and
temperature calibration). Both are scored on the test split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from batch_jobs.datasets import DEFAULT_DATA_DIR, Dataset, load_dataset
from model.data import MODALITIES
from model.evaluation import scores
from model.training import LabeledViews, TrainConfig, train_passive

RESULTS = Path(__file__).resolve().parent / "results"


def concat_imputed(ds: Dataset, rows: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """`(k, Σdim)`: the views side by side, a missing view replaced by its train mean."""
    parts = []
    for name in MODALITIES:
        x, m = getattr(ds.views, name), getattr(ds.views, f"{name}_mask")
        if x is None:
            continue
        mean = x[train_rows][m[train_rows]].mean(axis=0)  # (dim,)
        parts.append(np.where(m[rows, None], x[rows], mean))
    return np.concatenate(parts, axis=1).astype(np.float32)


def _metrics(pred: np.ndarray, true: np.ndarray, n_classes: int) -> dict[str, float]:
    m = scores(pred, true, n_classes)
    return {"accuracy": m.accuracy, "macro_f1": m.macro_f1}


def logistic_regression(ds: Dataset, cs: tuple[float, ...]) -> dict:
    """Fit one model per C on train, keep the best on val, report test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")
    scaler = StandardScaler().fit(concat_imputed(ds, tr, tr))
    x = {
        k: scaler.transform(concat_imputed(ds, r, tr))
        for k, r in (("tr", tr), ("va", va), ("te", te))
    }
    best: tuple[float, float, object] = (-1.0, 0.0, None)
    t0 = time.perf_counter()
    for c in cs:
        lr = LogisticRegression(C=c, max_iter=3000).fit(x["tr"], ds.labels[tr])
        val_acc = float((lr.predict(x["va"]) == ds.labels[va]).mean())
        if val_acc > best[0]:
            best = (val_acc, c, lr)
    secs = time.perf_counter() - t0
    pred = best[2].predict(x["te"])  # type: ignore[union-attr]
    info = {"model": "logistic regression", "C": best[1], "val_accuracy": best[0], "seconds": secs}
    return info | _metrics(pred, ds.labels[te], len(ds.class_names))


def trident(ds: Dataset, cfg: TrainConfig) -> dict:
    whole = LabeledViews(ds.views, ds.labels)
    t0 = time.perf_counter()
    clf = train_passive(
        whole.take(ds.rows("train")), whole.take(ds.rows("val")), ds.class_names, cfg
    )
    secs = time.perf_counter() - t0
    te = ds.rows("test")
    pred = clf.predict(ds.views.take(te)).probs.argmax(1)
    return {
        "model": "trident (passive)",
        "val_accuracy": clf.meta["train"].get("val_accuracy"),
        "seconds": secs,
        "epochs": clf.meta["train"]["epochs"],
    } | _metrics(pred, ds.labels[te], len(ds.class_names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="reviews")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--cs", default="0.0003,0.001,0.003,0.01", help="C values tried on val")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    ds = load_dataset(args.dataset, args.data_dir).with_split(args.seed)
    rows = [
        logistic_regression(ds, tuple(float(c) for c in args.cs.split(","))),
        trident(ds, TrainConfig(seed=args.seed)),
    ]
    print(f"{ds.name}: train {len(ds.rows('train'))}, test {len(ds.rows('test'))} rows")
    print(f"| {'model':<22} | test acc % | test macro-F1 % | train s |")
    print(f"|{'-' * 24}|------------|-----------------|---------|")
    for r in rows:
        print(
            f"| {r['model']:<22} | {100 * r['accuracy']:10.2f} | {100 * r['macro_f1']:15.2f} "
            f"| {r['seconds']:7.1f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {"dataset": ds.name, "imputation": "missing view = train mean of that view", "rows": rows}
    (RESULTS / "baseline.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
