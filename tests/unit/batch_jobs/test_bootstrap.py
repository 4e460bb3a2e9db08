"""ensure_model: idempotent; seeds pool and ledger (val rows holdout); CLI entry."""

from __future__ import annotations

import json

from batch_jobs.__main__ import main
from batch_jobs.bootstrap import ensure_model
from model.registry import ModelRegistry
from store.ledger import Ledger
from store.pool import Pool

from .conftest import SMALL


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
