"""A bootstrapped home (tiny model on reviews_small.npz) made once and copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from batch_jobs.bootstrap import ensure_model
from batch_jobs.config import JobConfig, Paths, QueryConfig
from model.data import Views
from model.training import TrainConfig
from store.ledger import Ledger
from store.pool import Pool
from store.posts import PostBatch, record_posts
from tests.conftest import SMALL


@pytest.fixture(scope="session")
def small(small_npz: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return small_npz  # the root conftest's fixture: fails loudly when the data is missing


@pytest.fixture(scope="session")
def job_cfg() -> JobConfig:
    # Tiny but well above chance on the gate (~0.35 accuracy over 18 classes) in a few seconds.
    train = TrainConfig(
        d=16, max_epochs=8, finetune_max_epochs=2, base_batch=64, patience=3, lr=3e-3
    )
    # score_days=14: every night scores the whole retention window, so nights run seconds
    # apart still see the same posts (the default window starts at the last night).
    return JobConfig(query=QueryConfig(query_size=20), train=train, min_new_labels=5, score_days=14)


@pytest.fixture(scope="session")
def template_home(tmp_path_factory, small, job_cfg) -> Path:
    """Bootstrapped (train+val seeded, model v0001) plus the test split classified into the pool."""
    home = tmp_path_factory.mktemp("template")
    paths = Paths(home)
    ensure_model(paths, job_cfg, SMALL)
    test = small["split"] == "test"
    ids = small["post_id"][test].astype(str)
    views = Views.from_nan_rows(small["image"][test], small["text"][test])
    with Ledger(paths.ledger) as ledger:
        pool = Pool(paths.pool)
        record_posts(pool, ledger, PostBatch(ids.tolist(), views, "classify"))
        pool.close()
    return home


@pytest.fixture
def paths(template_home, tmp_path) -> Paths:
    home = tmp_path / "home"
    shutil.copytree(template_home, home)
    return Paths(home)


def true_label(small: dict[str, np.ndarray], post_id: str) -> str:
    row = int(np.flatnonzero(small["post_id"] == post_id)[0])
    return str(small["class_names"][small["label"][row]])
