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


def test_engine_section_and_bad_engine():
    cfg = JobConfig.from_dict({"engine": {"engine": "ray", "workers": 2, "chunk_rows": 1024}})
    assert (cfg.engine.engine, cfg.engine.workers, cfg.engine.chunk_rows) == ("ray", 2, 1024)
    with pytest.raises(InvalidInputError):
        JobConfig.from_dict({"engine": {"engine": "spark"}})
    with pytest.raises(InvalidInputError):
        JobConfig.from_dict({"engine": {"workers": 0}})
    assert JobConfig().engine.prefilter == "auto"
    assert JobConfig.from_dict({"engine": {"prefilter": "off"}}).engine.prefilter == "off"
    with pytest.raises(InvalidInputError, match="prefilter"):
        JobConfig.from_dict({"engine": {"prefilter": "fp8"}})


def test_the_batch_cli_reads_the_servers_jobs_table(tmp_path, monkeypatch):
    from batch_jobs.__main__ import build, parse_args

    monkeypatch.delenv("POSTCLF_HOME", raising=False)
    monkeypatch.delenv("POSTCLF_CONFIG", raising=False)
    cfg_file = tmp_path / "postclf.toml"
    cfg_file.write_text(
        'home = "/srv/postclf"\n[jobs]\nmin_new_labels = 7\npool_days = 3\n'
        '[jobs.query]\nstrategy = "bald"\n[jobs.engine]\nworkers = 2\n'
    )
    paths, cfg = build(parse_args(["--config", str(cfg_file), "nightly"]))
    assert paths.home == Path("/srv/postclf")
    assert (cfg.min_new_labels, cfg.pool_days, cfg.query.strategy) == (7, 3, "bald")
    assert cfg.engine.workers == 2
    paths, cfg = build(
        parse_args(["--config", str(cfg_file), "--home", "/h", "nightly", "--engine", "ray"])
    )
    assert paths.home == Path("/h") and cfg.engine.engine == "ray" and cfg.engine.workers == 2


def test_crowd_section_builds_and_names_unknown_keys():
    from batch_jobs.config import CrowdConfig

    cfg = JobConfig.from_dict({"crowd": {"overlap": 3, "control_share": 0.1}})
    assert cfg.crowd == CrowdConfig(overlap=3, control_share=0.1)
    with pytest.raises(InvalidInputError, match=r"jobs\.crowd"):
        JobConfig.from_dict({"crowd": {"overlpa": 3}})


def test_query_policy_and_self_training_keys_build_from_plain_data() -> None:
    cfg = JobConfig.from_dict(
        {
            "query": {"strategy": "margin_committee", "sampling": "power", "random_share": 0.1},
            "self_training": {"enabled": True, "thresholds": [0.9, 0.95], "per_class": True},
        }
    )
    assert cfg.query.sampling == "power" and cfg.query.random_share == 0.1
    assert cfg.self_training.enabled and cfg.self_training.thresholds == (0.9, 0.95)
    assert cfg.self_training.per_class
    with pytest.raises(InvalidInputError, match="treshold"):
        JobConfig.from_dict({"self_training": {"treshold": 0.9}})
