"""Paths and JobConfig: layout, nested construction, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_jobs.config import JobConfig, Paths
from postclf_errors import InvalidInputError


def test_paths_layout():
    p = Paths(Path("/x"))
    assert (p.ledger, p.pool, p.models, p.exports) == (
        Path("/x/ledger.db"),
        Path("/x/pool"),
        Path("/x/models"),
        Path("/x/exports"),
    )


def test_from_dict_nested():
    cfg = JobConfig.from_dict(
        {"min_new_labels": 3, "query": {"strategy": "bald", "query_size": 5}, "train": {"d": 8}}
    )
    assert (cfg.min_new_labels, cfg.query.strategy, cfg.query.query_size, cfg.train.d) == (
        3,
        "bald",
        5,
        8,
    )


@pytest.mark.parametrize(
    "data",
    [{"nope": 1}, {"query": {"nope": 1}}, {"holdout_fraction": 1.5}, {"min_new_labels": -1}],
)
def test_invalid(data):
    with pytest.raises(InvalidInputError):
        JobConfig.from_dict(data)
