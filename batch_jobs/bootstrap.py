"""First model: train passive on a labeled data set's train split and seed pool + ledger with it.

Idempotent: with a current model it does nothing; interrupted half-way it resumes (pool and
ledger writes skip what is already there). Test-split rows are left out entirely. With an
`unlabeled_share` > 0 that share of each class's train rows is pooled without its label, so the
first nightly query has real unlabeled posts to choose from (the demo's active-learning loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batch_jobs.active_step import fold_in
from batch_jobs.config import JobConfig, Paths
from batch_jobs.datasets import Dataset, load_dataset
from batch_jobs.faults import fault_point
from batch_jobs.leases import BOOTSTRAP, lease_for
from batch_jobs.retrain import evaluate
from batch_jobs.stores import Stores, job_stores
from model.registry import ModelRegistry
from model.training import LabeledViews
from postclf_errors import InvalidInputError
from store.lease import Lease
from store.ledger import LabelRow
from store.posts import PostBatch, record_posts

log = logging.getLogger(__name__)

LOCK = BOOTSTRAP
ASSESSOR = "dataset"


@dataclass(frozen=True)
class Seed:
    """What a bootstrap uses: the train + val rows, and which train rows stay unlabeled."""

    data: Dataset  # train + val rows only
    unlabeled: np.ndarray  # (n,) bool: pooled without a label

    def rows(self, part: str, labeled: bool = True) -> np.ndarray:
        return np.flatnonzero((self.data.split == part) & (self.unlabeled != labeled))


def load_seed(data_path: Path, unlabeled_share: float = 0.0, seed: int = 0) -> Seed:
    """The data set's train + val rows; `unlabeled_share` of each class's train rows unlabeled."""
    if not 0.0 <= unlabeled_share < 1.0:
        raise InvalidInputError("must be in [0, 1)", "unlabeled_share")
    full = load_dataset(data_path)
    if full.split is None:
        raise InvalidInputError(f"{data_path} has no 'split' (train/val/test)", "data_path")
    keep = np.flatnonzero(np.isin(full.split, ["train", "val"]))
    data = Dataset(
        full.name,
        full.post_ids[keep],
        full.views.take(keep),
        full.labels[keep],
        full.class_names,
        full.split[keep],
    )
    unlabeled = np.zeros(len(data), bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(data.labels):
        rows = rng.permutation(np.flatnonzero((data.labels == c) & (data.split == "train")))
        unlabeled[rows[: int(len(rows) * unlabeled_share)]] = True
    return Seed(data, unlabeled)


def seed_stores(stores: Stores, seed: Seed) -> None:
    """Pool every train/val row; ledger them as seed posts (val = holdout), labeled by "dataset"
    except the unlabeled share."""
    data = seed.data
    ids = data.post_ids.tolist()
    assert data.split is not None  # load_seed keeps only data sets with a split
    holdout = (data.split == "val").tolist()
    record_posts(stores.pool, stores.ledger, PostBatch(ids, data.views, "seed", holdout=holdout))
    names = data.class_names
    stores.ledger.add_labels(
        [LabelRow(ids[i], ASSESSOR, names[data.labels[i]]) for i in np.flatnonzero(~seed.unlabeled)]
    )


def ensure_model(
    paths: Paths, cfg: JobConfig, data_path: Path, unlabeled_share: float = 0.0
) -> str:
    """The current model's version; trains, saves and promotes the first one when none exists
    (on the data set's labeled train rows, val as the gate; see the module docstring)."""
    registry = ModelRegistry(paths.models)
    current = registry.current_version()
    if current is not None:
        return current
    with (
        job_stores(paths, cfg) as stores,
        lease_for(stores.ledger, LOCK, paths, cfg) as lease,  # JobBusyError: running elsewhere
    ):
        current = registry.current_version()  # someone may have finished meanwhile
        if current is not None:
            return current
        seed = load_seed(Path(data_path), unlabeled_share, cfg.seed)
        return _bootstrap(cfg, stores, lease, registry, seed, Path(data_path))


def _bootstrap(
    cfg: JobConfig,
    stores: Stores,
    lease: Lease,
    registry: ModelRegistry,
    seed: Seed,
    data_path: Path,
) -> str:
    seed_stores(stores, seed)
    ledger = stores.ledger
    fault_point("bootstrap.train")
    labeled = LabeledViews(seed.data.views, seed.data.labels)
    train, val = labeled.take(seed.rows("train")), labeled.take(seed.rows("val"))
    n_unlabeled = int(seed.unlabeled.sum())
    log.info(
        "event=bootstrap_training train=%d val=%d unlabeled_pooled=%d max_epochs=%d",
        len(train), len(val), n_unlabeled, cfg.train.max_epochs,
    )  # fmt: skip
    clf = fold_in(
        None, train, val if len(val) else None, seed.data.class_names, cfg.train, _log_epoch
    )
    metrics = evaluate(clf, val) if len(val) else {}
    lease.ensure_held()
    version = registry.save(clf, {f"gate_{k}": float(v) for k, v in metrics.items()})
    with lease.guard():  # never after shutdown began, never without the lease
        registry.promote(version)
        ledger.record_model(
            version,
            None,
            "promoted",
            {"gate": metrics, "data": str(data_path), "unlabeled_pooled": n_unlabeled},
            f"bootstrap: passive phase on {len(train)} train rows, {len(val)} val rows as gate",
            label_seq=ledger.label_seq(),
        )
    log.info("event=bootstrap_done version=%s gate=%s", version, _rounded(metrics))
    return version


def _log_epoch(epoch: int, max_epochs: int, val_accuracy: float | None) -> None:
    acc = "n/a" if val_accuracy is None else f"{val_accuracy:.4f}"
    log.info("event=bootstrap_epoch epoch=%d/%d val_accuracy=%s", epoch, max_epochs, acc)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items()}
