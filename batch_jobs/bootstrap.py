"""First model: train passive on a labeled data set's train split and seed pool + ledger with it.

Idempotent: with a current model it does nothing; interrupted half-way it resumes (pool and
ledger writes skip what is already there). Test-split rows are left out entirely.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from batch_jobs.active_step import fold_in
from batch_jobs.config import JobConfig, Paths
from batch_jobs.faults import fault_point
from batch_jobs.leases import BOOTSTRAP, lease_for
from batch_jobs.retrain import evaluate
from model.data import Views
from model.registry import ModelRegistry
from model.training import LabeledViews
from postclf_errors import InvalidInputError
from store.lease import Lease
from store.ledger import LabelRow, Ledger
from store.pool import Pool
from store.posts import PostBatch, record_posts

LOCK = BOOTSTRAP
ASSESSOR = "dataset"
KEYS = ("image", "text", "label", "class_names", "split", "post_id")


def load_seed(data_path: Path) -> dict[str, np.ndarray]:
    """The data set's arrays (NaN rows = missing view), train + val rows only."""
    with np.load(data_path, allow_pickle=False) as d:
        missing = [k for k in KEYS if k not in d.files]
        if missing:
            raise InvalidInputError(f"{data_path} lacks keys {missing}", "data_path")
        arrays = {k: d[k] for k in KEYS}
    keep = np.isin(arrays["split"], ["train", "val"])
    out = {k: v[keep] if k != "class_names" else v for k, v in arrays.items()}
    out["post_id"] = out["post_id"].astype(str)
    return out


def seed_stores(paths: Paths, cfg: JobConfig, ledger: Ledger, data: dict[str, np.ndarray]) -> None:
    """Pool every train/val row; ledger them as seed posts labeled by "dataset" (val = holdout)."""
    views = Views.from_nan_rows(data["image"], data["text"])
    ids = data["post_id"]
    pool = Pool(paths.pool, cfg.pool_dtype)
    try:
        holdout = (data["split"] == "val").tolist()
        record_posts(pool, ledger, PostBatch(ids.tolist(), views, "seed", holdout=holdout))
    finally:
        pool.close()
    names = data["class_names"].astype(str)
    ledger.add_labels(
        [LabelRow(p, ASSESSOR, str(names[c])) for p, c in zip(ids, data["label"], strict=True)]
    )


def ensure_model(paths: Paths, cfg: JobConfig, data_path: Path) -> str:
    """The current model's version; trains, saves and promotes the first one when none exists."""
    registry = ModelRegistry(paths.models)
    current = registry.current_version()
    if current is not None:
        return current
    ledger = Ledger(paths.ledger, cfg.ledger_synchronous, cfg.holdout_fraction)
    try:
        with lease_for(ledger, LOCK, cfg) as lease:  # JobBusyError: running elsewhere
            current = registry.current_version()  # someone may have finished meanwhile
            return current or _bootstrap(paths, cfg, ledger, lease, registry, Path(data_path))
    finally:
        ledger.close()


def _bootstrap(
    paths: Paths,
    cfg: JobConfig,
    ledger: Ledger,
    lease: Lease,
    registry: ModelRegistry,
    data_path: Path,
) -> str:
    data = load_seed(data_path)
    seed_stores(paths, cfg, ledger, data)
    fault_point("bootstrap.train")
    views = Views.from_nan_rows(data["image"], data["text"])
    labeled = LabeledViews(views, data["label"].astype(np.int64))
    train = labeled.take(np.flatnonzero(data["split"] == "train"))
    val = labeled.take(np.flatnonzero(data["split"] == "val"))
    classes = data["class_names"].astype(str).tolist()
    clf = fold_in(None, train, val if len(val) else None, classes, cfg.train)
    metrics = evaluate(clf, val) if len(val) else {}
    lease.ensure_held()
    version = registry.save(clf, {f"gate_{k}": float(v) for k, v in metrics.items()})
    with lease.guard():  # never after shutdown began, never without the lease
        registry.promote(version)
        ledger.record_model(
            version,
            None,
            "promoted",
            {"gate": metrics, "data": str(data_path)},
            f"bootstrap: passive phase on {len(train)} train rows, {len(val)} val rows as gate",
            label_seq=ledger.label_seq(),
        )
    return version
