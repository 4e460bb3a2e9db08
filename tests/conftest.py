"""The suite's one fixture set: reviews_small loaded once, one tiny training config, and one
home bootstrapped once per session whose model every package's tests share."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from batch_jobs.bootstrap import ensure_model
from batch_jobs.config import JobConfig, Paths, QueryConfig
from batch_jobs.datasets import DEFAULT_DATA_DIR
from model.classifier import Classifier
from model.data import Views
from model.registry import ModelRegistry
from model.training import LabeledViews, TrainConfig

# Tiny models train faster on one intra-op thread, and a busy shared machine cannot then
# oversubscribe the cores (a two-thread tiny training slowed ~50x at load 8).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("POSTCLF_DATA_DIR", DEFAULT_DATA_DIR))
SMALL = DATA_DIR / "reviews_small.npz"

# The one tiny training config: the real architecture, trained in about a second on 2 cores,
# well above chance on the gate (~0.35 accuracy over 18 classes).
TINY_TRAIN = TrainConfig(
    d=16, max_epochs=8, patience=3, finetune_max_epochs=3, base_batch=64, lr=3e-3
)
# score_days=14: every night scores the whole retention window, so nights run seconds apart
# still see the same posts (the default window starts at the last night).
TINY_JOBS = JobConfig(
    query=QueryConfig(query_size=20), train=TINY_TRAIN, min_new_labels=5, score_days=14
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
def bootstrapped_home(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Bootstrapped once: v0001 trained on the fixture's train split (val = the gate), pool and
    ledger seeded with train + val. Shared: copy it before changing anything."""
    home = tmp_path_factory.mktemp("bootstrapped")
    ensure_model(Paths(home), TINY_JOBS, SMALL)
    return home


@pytest.fixture(scope="session")
def tiny_model(bootstrapped_home: Path) -> Classifier:
    """The shared home's model (do not mutate; deep-copy it first)."""
    return ModelRegistry(bootstrapped_home / "models").load()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a state another thread reaches when it exposes no event of its own."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        tick.wait(0.002)
