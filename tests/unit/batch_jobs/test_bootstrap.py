"""ensure_model: idempotent; seeds pool and ledger (val rows holdout); CLI entry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batch_jobs.__main__ import main
from batch_jobs.bootstrap import ensure_model
from batch_jobs.config import Paths
from batch_jobs.nightly import run_nightly
from model.registry import ModelRegistry
from postclf_errors import InvalidInputError
from store.ledger import Ledger
from store.pool import Pool
from tests.conftest import SMALL


def test_bootstrap_seeded_and_idempotent(paths, job_cfg, small):
    assert ModelRegistry(paths.models).current_version() == "v0001"
    with Ledger(paths.ledger) as ledger:
        seq = ledger.label_seq()
        n_seed = int((small["split"] != "test").sum())
        rows = ledger.labels()
        assert len(rows) == n_seed and {r[1] for r in rows} == {"dataset"}
        val = set(small["post_id"][small["split"] == "val"].astype(str))
        assert {r[0] for r in rows if r[3]} == val  # holdout = exactly the val rows
        assert ledger.get_model("v0001").status == "promoted"
    assert ensure_model(paths, job_cfg, SMALL) == "v0001"
    assert ModelRegistry(paths.models).versions() == ["v0001"]
    with Ledger(paths.ledger) as ledger:
        assert ledger.label_seq() == seq
    assert len(Pool(paths.pool)) == len(small["post_id"])


def test_cli_dry_run_and_bootstrap_noop(paths, capsys):
    assert main(["--home", str(paths.home), "--json", "nightly", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "dry_run" and len(out["post_ids"]) == 20
    assert main(["--home", str(paths.home), "--json", "bootstrap", "--data", str(SMALL)]) == 0
    assert json.loads(capsys.readouterr().out) == {"current_version": "v0001"}


def test_cli_exits_3_when_the_lease_is_held_elsewhere(paths, capsys):
    with Ledger(paths.ledger) as ledger:
        assert ledger.acquire_lock("nightly", "otherhost:1:abcd", ttl_s=3600)
    assert main(["--home", str(paths.home), "nightly"]) == 3
    assert "did not run" in capsys.readouterr().err


def test_unlabeled_share_pools_train_rows_without_labels(tmp_path, job_cfg, small):
    paths = Paths(tmp_path / "home")
    assert ensure_model(paths, job_cfg, SMALL, unlabeled_share=0.5) == "v0001"
    train = small["split"] == "train"
    with Ledger(paths.ledger) as ledger:
        labeled = {r[0] for r in ledger.labels()}
    pooled = len(Pool(paths.pool))
    assert pooled == int((small["split"] != "test").sum())  # every train + val row is pooled
    unlabeled = set(small["post_id"][train].astype(str)) - labeled
    for c in np.unique(small["label"][train]):  # about half of each class's train rows
        rows = set(small["post_id"][train & (small["label"] == c)].astype(str))
        assert len(rows & unlabeled) == int(len(rows) * 0.5)
    assert set(small["post_id"][small["split"] == "val"].astype(str)) <= labeled  # the gate
    report = run_nightly(paths, job_cfg)
    assert report.status == "created" and len(report.post_ids) == job_cfg.query.query_size
    assert set(report.post_ids) <= unlabeled  # the first query asks about the unlabeled rows


def test_unlabeled_share_out_of_range_is_refused(tmp_path, job_cfg):
    with pytest.raises(InvalidInputError) as err:
        ensure_model(Paths(tmp_path / "h"), job_cfg, SMALL, unlabeled_share=1.0)
    assert err.value.field == "unlabeled_share"
