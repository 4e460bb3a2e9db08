"""retrain: skip rule, promotion, rejection by the gate, no-gate fallback, label resolution."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import batch_jobs.retrain as retrain_mod
from batch_jobs.aggregation import aggregate_rows
from batch_jobs.bootstrap import ensure_model
from batch_jobs.config import CrowdConfig, Paths
from batch_jobs.labels import LabelRow, submit_labels
from batch_jobs.retrain import decide, retrain
from model.registry import ModelRegistry
from postclf_errors import JobBusyError, ModelUnavailableError
from store.ledger import Ledger

from .conftest import true_label


def label_test_posts(paths: Paths, small, n: int, assessor: str = "ann") -> list[str]:
    """Label `n` classified (test-split) posts with their true class; returns their ids."""
    ids = small["post_id"][small["split"] == "test"].astype(str)[:n].tolist()
    classes = small["class_names"].astype(str).tolist()
    with Ledger(paths.ledger) as ledger:
        got = submit_labels(
            ledger, classes, [LabelRow(p, assessor, true_label(small, p)) for p in ids]
        )
    assert got.accepted == n
    return ids


def test_resolve_majority_ties_and_unknown():
    rows = [
        ("a", "x", "Knits", False),
        ("a", "y", "Knits", False),
        ("a", "z", "Dresses", False),
        ("b", "x", "Knits", True),
        ("b", "y", "Dresses", True),
        ("c", "x", "Jackets", False),
        ("d", "x", "Dresses", True),
    ]
    got = aggregate_rows(rows, ["Dresses", "Knits"], CrowdConfig(aggregate="mv"))
    assert got.post_ids.tolist() == ["a", "d"]
    assert got.labels.tolist() == [1, 0]
    assert got.holdout.tolist() == [False, True]
    assert (got.ties, got.unknown_class) == (["b"], ["c"])


def test_decide():
    cur = {"accuracy": 0.80, "macro_f1": 0.7, "n": 10}
    assert decide({"accuracy": 0.796, "macro_f1": 0.7, "n": 10}, cur, 0.005)[0]
    ok, reason = decide({"accuracy": 0.79, "macro_f1": 0.7, "n": 10}, cur, 0.005)
    assert not ok and "0.7900 < current 0.8000" in reason
    assert decide({"accuracy": 0.1, "macro_f1": 0.1, "n": 10}, None, 0.005)[0]


def test_skips_with_few_new_labels_unless_forced(paths, job_cfg, small):
    label_test_posts(paths, small, 2)
    skipped = retrain(paths, job_cfg)
    assert skipped.status == "skipped" and "2 new labels" in skipped.reason
    assert ModelRegistry(paths.models).current_version() == "v0001"
    forced = retrain(paths, job_cfg, force=True)
    assert forced.status in {"promoted", "rejected"} and forced.version == "v0002"


def test_promotes_and_records(paths, job_cfg, small):
    label_test_posts(paths, small, 10)
    rep = retrain(paths, job_cfg)
    assert rep.status == "promoted", rep.reason
    assert (rep.parent, rep.version, rep.new_labels) == ("v0001", "v0002", 10)
    assert rep.gate_size > 0 and rep.train_size > 0
    assert job_cfg.self_training.enabled  # the default: self-training ran and reported
    assert rep.self_training is not None and rep.self_training["candidates"] > 0
    assert ModelRegistry(paths.models).current_version() == "v0002"
    with Ledger(paths.ledger) as ledger:
        rec = ledger.get_model("v0002")
        assert (rec.status, rec.parent) == ("promoted", "v0001")
        assert rec.label_seq == ledger.label_seq()
    again = retrain(paths, job_cfg)  # nothing new since v0002
    assert again.status == "skipped" and again.new_labels == 0


def _scrambled(parent, labeled, val, classes, cfg):
    """A clearly worse candidate: the parent with every weight matrix's rows permuted."""
    clf = copy.deepcopy(parent)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in clf.net.parameters():
            if p.ndim == 2:
                p.copy_(p[torch.randperm(p.shape[0], generator=gen)])
    clf.meta = {**clf.meta, "label_count": len(labeled)}
    return clf


def test_gate_rejects_a_worse_candidate(paths, job_cfg, small, monkeypatch):
    monkeypatch.setattr(retrain_mod, "fold_in", _scrambled)
    label_test_posts(paths, small, 10)
    rep = retrain(paths, job_cfg)
    assert rep.status == "rejected", rep.reason
    assert rep.current["accuracy"] > rep.candidate["accuracy"] + 0.1  # clearly worse
    assert " < current " in rep.reason
    assert ModelRegistry(paths.models).current_version() == "v0001"
    with Ledger(paths.ledger) as ledger:
        rec = ledger.get_model(rep.version)
        assert (rec.status, rec.reason) == ("rejected", rep.reason)


def test_no_gate_set_is_never_promoted_silently(tmp_path, small, job_cfg):
    arrays = dict(small)
    arrays["split"] = np.where(small["split"] == "val", "train", small["split"])
    data = tmp_path / "no_val.npz"
    np.savez(data, **arrays)
    paths = Paths(tmp_path / "home")
    ensure_model(paths, job_cfg, data)
    rep = retrain(paths, job_cfg, force=True)
    assert rep.status == "candidate" and rep.gate_size == 0
    assert "not promoted" in rep.reason
    assert ModelRegistry(paths.models).current_version() == "v0001"


def test_lease_held_by_a_live_holder_raises_busy(paths, job_cfg):
    with Ledger(paths.ledger) as ledger:
        assert ledger.acquire_lock("retrain", "someone", 60)
    with pytest.raises(JobBusyError, match="someone"):
        retrain(paths, job_cfg, force=True)
    assert ModelRegistry(paths.models).versions() == ["v0001"]


def test_missing_model_raises(tmp_path, job_cfg):
    with pytest.raises(ModelUnavailableError):
        retrain(Paths(tmp_path), job_cfg, force=True)
