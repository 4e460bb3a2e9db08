"""Shared fixtures: the real test fixture data set and a tiny trained model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from model.data import Views
from model.training import LabeledViews, TrainConfig, train_passive

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("POSTCLF_DATA_DIR", ROOT.parent / "shared" / "data"))
SMALL = DATA_DIR / "reviews_small.npz"

# Small enough to train in about a second on 2 cores; still the real architecture.
TINY_TRAIN = TrainConfig(
    d=32, max_epochs=15, patience=4, finetune_max_epochs=3, base_batch=64, lr=3e-3
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SMALL.exists():
        pytest.fail(f"test fixture missing: {SMALL} (set POSTCLF_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def small_npz(data_dir: Path) -> dict[str, np.ndarray]:
    with np.load(data_dir / "reviews_small.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def small_splits(small_npz: dict[str, np.ndarray]) -> dict[str, LabeledViews]:
    views = Views.from_nan_rows(small_npz["image"], small_npz["text"])
    labels = small_npz["label"].astype(np.int64)
    return {
        name: LabeledViews(views.take(idx), labels[idx])
        for name in ("train", "val", "test")
        for idx in [np.flatnonzero(small_npz["split"] == name)]
    }


@pytest.fixture(scope="session")
def class_names(small_npz: dict[str, np.ndarray]) -> list[str]:
    return [str(c) for c in small_npz["class_names"]]


@pytest.fixture(scope="session")
def tiny_model(small_splits, class_names):  # type: ignore[no-untyped-def]
    """A trident trained on the fixture's train split (shared; do not mutate)."""
    return train_passive(small_splits["train"], small_splits["val"], class_names, TINY_TRAIN)
