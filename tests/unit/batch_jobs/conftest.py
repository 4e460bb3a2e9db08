"""A bootstrapped home (the suite's shared one plus the test split pooled), copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from batch_jobs.config import JobConfig, Paths
from model.data import Views
from store.ledger import Ledger
from store.pool import Pool
from store.posts import PostBatch, record_posts
from tests.conftest import TINY_JOBS


@pytest.fixture(scope="session")
def small(small_npz: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return small_npz  # the root conftest's fixture: fails loudly when the data is missing


@pytest.fixture(scope="session")
def job_cfg() -> JobConfig:
    return TINY_JOBS


@pytest.fixture(scope="session")
def template_home(tmp_path_factory, small, bootstrapped_home) -> Path:
    """The shared bootstrapped home plus the test split classified into the pool."""
    home = tmp_path_factory.mktemp("template") / "home"
    shutil.copytree(bootstrapped_home, home)
    paths = Paths(home)
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
