"""run_nightly: one query per night, open-query and labeled posts not re-queried, the export,
the lock, dry runs, and repair of a missing export."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from batch_jobs import policy as policy_module
from batch_jobs.config import QueryConfig
from batch_jobs.export import COLUMNS, read_export
from batch_jobs.labels import LabelRow, submit_labels
from batch_jobs.nightly import run_nightly
from model.data import Views
from model.registry import ModelRegistry
from postclf_errors import JobBusyError, ModelUnavailableError
from store.ledger import Ledger
from store.pool import Pool
from store.posts import PostBatch, record_posts

from .conftest import true_label

NIGHT = date(2026, 3, 1)


def test_first_run_creates_and_exports_a_query(paths, job_cfg):
    rep = run_nightly(paths, job_cfg, night=NIGHT)
    assert rep.status == "created"
    assert rep.query_id == "q20260301-v0001" and rep.model_version == "v0001"
    assert rep.query_size == 20 and len(set(rep.post_ids)) == 20
    assert rep.pool_size == 901 and rep.eligible == 216  # only the unlabeled test split
    assert {"plan", "score", "score.read_chunks", "score.score_chunks", "export"} <= set(
        rep.timings
    )
    with Ledger(paths.ledger) as ledger:
        assert [q.query_id for q in ledger.list_queries()] == [rep.query_id]
        assert ledger.posts_in_open_queries() == set(rep.post_ids)
        (run,) = ledger.job_runs("nightly")
        assert run.status == "ok" and run.report["query_id"] == rep.query_id


def test_default_policy_queries_typical_posts_while_labels_are_few(paths, job_cfg, monkeypatch):
    """The nightly default (README, "Nightly default"): below `cold_start_labels` labeled
    posts (541 here, under the default 1,000) the query is the typicality cold start plus
    the random control row, and the labeled posts' clusters count as covered (their features
    go in, as in the simulator)."""
    assert job_cfg.query.cold_start_labels == QueryConfig().cold_start_labels == 1000
    seen = []
    real = policy_module.typical_picks
    monkeypatch.setattr(
        policy_module,
        "typical_picks",
        lambda f, q, rng, lab: seen.append(lab) or real(f, q, rng, lab),
    )
    rep = run_nightly(paths, job_cfg, night=NIGHT)
    table, _ = read_export(paths.exports / rep.query_id)
    assert job_cfg.query.random_share == QueryConfig().random_share == 0.05  # one row of 20
    reasons = table["reason"].value_counts().to_dict()
    assert reasons == {"cold-start:typical": 19, "control:random": 1}
    assert (table["strategy"] == "margin").all()  # the configured strategy, used once warm
    with Ledger(paths.ledger) as ledger:
        labeled = ledger.labeled_train_posts()
    (features,) = seen
    assert 0 < labeled < 1000 and features.shape[0] == labeled and features.shape[1] > 0


def test_export_folder_contents(paths, job_cfg, small):
    query = replace(job_cfg.query, cold_start_labels=0, random_share=0.0)  # plain margin order
    plain = replace(job_cfg, query=query)
    rep = run_nightly(paths, plain, night=NIGHT)
    folder = paths.exports / rep.query_id
    assert rep.export_path == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "label_config.xml",  # Label Studio's interface and tasks (issue 13)
        "manifest.json",
        "query.csv",
        "query.parquet",
        "tasks.json",
    ]
    table, manifest = read_export(folder)
    assert list(table.columns) == COLUMNS
    assert table["post_id"].tolist() == rep.post_ids
    assert table["rank"].tolist() == list(range(20))
    assert set(table["predicted_label"]) <= set(small["class_names"].astype(str))
    assert table["confidence"].between(0, 1).all() and (table["strategy"] == "margin").all()
    assert table["score"].is_monotonic_decreasing  # best first, plain margin
    csv = pd.read_csv(folder / "query.csv")
    assert csv["post_id"].tolist() == rep.post_ids
    assert manifest["model_version"] == "v0001" and manifest["strategy"] == "margin"
    assert (manifest["pool_size"], manifest["eligible"], manifest["size"]) == (901, 216, 20)
    assert sum(manifest["predicted_counts"].values()) == 20
    assert manifest["parameters"]["query_size"] == 20
    assert not [p for p in paths.exports.iterdir() if p.name.startswith(".")]  # no temp left


def test_rerun_same_night_returns_the_same_query(paths, job_cfg):
    first = run_nightly(paths, job_cfg, night=NIGHT)
    again = run_nightly(paths, job_cfg, night=NIGHT)
    assert again.status == "existing"
    assert (again.query_id, again.post_ids) == (first.query_id, first.post_ids)
    with Ledger(paths.ledger) as ledger:
        assert len(ledger.list_queries()) == 1


def test_missing_export_is_repaired_on_rerun(paths, job_cfg):
    first = run_nightly(paths, job_cfg, night=NIGHT)
    shutil.rmtree(first.export_path)
    again = run_nightly(paths, job_cfg, night=NIGHT)
    assert again.status == "existing"
    assert json.loads((paths.exports / first.query_id / "manifest.json").read_text())["size"] == 20


def test_open_query_and_labeled_posts_are_not_requeried(paths, job_cfg, small):
    first = run_nightly(paths, job_cfg, night=NIGHT)
    classes = small["class_names"].astype(str).tolist()
    labeled = [
        p for p in small["post_id"][small["split"] == "test"].astype(str) if p not in first.post_ids
    ][:3]
    with Ledger(paths.ledger) as ledger:
        submit_labels(ledger, classes, [LabelRow(p, "ann", true_label(small, p)) for p in labeled])
    second = run_nightly(paths, job_cfg, night=date(2026, 3, 2))
    assert second.status == "created" and second.eligible == 216 - 20 - 3
    assert not set(second.post_ids) & (set(first.post_ids) | set(labeled))


def test_expired_queries_are_closed_and_their_posts_eligible_again(paths, job_cfg):
    first = run_nightly(paths, job_cfg, night=NIGHT)
    with Ledger(paths.ledger) as ledger:  # age the query past the TTL
        ledger._conn().execute("UPDATE queries SET created_at = '2000-01-01T00:00:00+00:00'")
    second = run_nightly(paths, job_cfg, night=date(2026, 3, 2))
    assert second.closed_queries == [first.query_id]
    assert second.eligible == 216
    with Ledger(paths.ledger) as ledger:
        assert ledger.get_query(first.query_id).status == "closed"


def test_nightly_retrains_on_new_labels_and_queries_with_the_new_model(paths, job_cfg, small):
    first = run_nightly(paths, job_cfg, night=NIGHT)
    classes = small["class_names"].astype(str).tolist()
    with Ledger(paths.ledger) as ledger:
        items = [LabelRow(p, "ann", true_label(small, p), first.query_id) for p in first.post_ids]
        assert submit_labels(ledger, classes, items).accepted == 20
    second = run_nightly(paths, job_cfg, night=date(2026, 3, 2))
    assert second.retrain["status"] in {"promoted", "rejected"}
    assert second.retrain["reason"]
    current = ModelRegistry(paths.models).current_version()
    assert second.model_version == current
    assert (current == "v0002") == (second.retrain["status"] == "promoted")


def test_retrain_reports_the_query_models_accuracy_on_its_random_control(paths, job_cfg, small):
    cfg = replace(job_cfg, query=replace(job_cfg.query, random_share=0.25))
    first = run_nightly(paths, cfg, night=NIGHT)
    table, _ = read_export(paths.exports / first.query_id)
    ctrl = table[table["reason"] == "control:random"]
    assert len(ctrl) == 5  # 25% of 20
    classes = small["class_names"].astype(str).tolist()
    with Ledger(paths.ledger) as ledger:
        items = [LabelRow(p, "ann", true_label(small, p), first.query_id) for p in first.post_ids]
        assert submit_labels(ledger, classes, items).accepted == 20
    second = run_nightly(paths, cfg, night=date(2026, 3, 2))
    pairs = zip(ctrl.post_id, ctrl.predicted_label, strict=True)
    right = [true_label(small, p) == c for p, c in pairs]
    expected = {"answers": 5, "accuracy": round(float(np.mean(right)), 4)}
    assert second.retrain["random_control"] == {"v0001": expected}  # the strategy's 15 aside


def test_lease_held_by_a_live_holder_raises_busy(paths, job_cfg):
    with Ledger(paths.ledger) as ledger:
        ledger.acquire_lock("nightly", "other-replica", 60)
    with pytest.raises(JobBusyError, match="other-replica"):
        run_nightly(paths, job_cfg, night=NIGHT)
    with Ledger(paths.ledger) as ledger:
        assert ledger.list_queries() == [] and ledger.job_runs() == []


def test_dry_run_writes_nothing(paths, job_cfg):
    rep = run_nightly(paths, job_cfg, night=NIGHT, dry_run=True)
    assert rep.status == "dry_run" and len(rep.post_ids) == 20
    assert not paths.exports.exists() or not list(paths.exports.iterdir())
    with Ledger(paths.ledger) as ledger:
        assert ledger.list_queries() == [] and ledger.job_runs() == []
    real = run_nightly(paths, job_cfg, night=NIGHT)
    assert real.post_ids == rep.post_ids  # same seed and night, same query


def test_small_pool_gives_what_it_has(paths, job_cfg):
    cfg = replace(job_cfg, query=replace(job_cfg.query, query_size=500))
    rep = run_nightly(paths, cfg, night=NIGHT)
    assert rep.query_size == 216
    nothing = run_nightly(paths, cfg, night=date(2026, 3, 2))
    assert nothing.status == "no_eligible"


def test_no_model_fails_and_records_it(tmp_path, job_cfg):
    from batch_jobs.config import Paths

    paths = Paths(tmp_path)
    with pytest.raises(ModelUnavailableError):
        run_nightly(paths, job_cfg, night=NIGHT)
    with Ledger(paths.ledger) as ledger:
        (run,) = ledger.job_runs()
        assert run.status == "failed" and "no model" in run.report["error"]


def test_default_window_scores_posts_since_the_last_night(paths, job_cfg, small):
    cfg = replace(job_cfg, score_days=0)  # the default: since the last successful night
    first = run_nightly(paths, cfg, night=NIGHT)
    assert first.status == "created" and first.eligible == 216 and first.window_since is None
    rows = np.flatnonzero(small["split"] == "test")[:30]
    new_ids = [f"late-{i}" for i in range(30)]
    views = Views.from_nan_rows(small["image"][rows], small["text"][rows])
    with Ledger(paths.ledger) as ledger:
        pool = Pool(paths.pool)
        record_posts(pool, ledger, PostBatch(new_ids, views, "ingest"))
        pool.close()
    second = run_nightly(paths, cfg, night=date(2026, 3, 2))
    assert second.status == "created" and second.eligible == 30
    assert set(second.post_ids) <= set(new_ids) and second.window_since is not None
    assert second.skipped["outside_window"] == 901  # every earlier post, not even scored


def test_old_days_expire_but_labeled_posts_keep_their_embeddings(paths, job_cfg, small):
    old_day = datetime(2026, 2, 1, tzinfo=UTC)
    rows = np.flatnonzero(small["split"] == "test")[:10]
    views = Views.from_nan_rows(small["image"][rows], small["text"][rows])
    old_ids = [f"old-{i}" for i in range(10)]
    with Ledger(paths.ledger) as ledger:
        pool = Pool(paths.pool)
        pool.append(old_ids, views, arrived_ns=int(old_day.timestamp() * 1e9))
        pool.close()
        ledger.add_posts(old_ids, "ingest")
        classes = small["class_names"].astype(str).tolist()
        submit_labels(ledger, classes, [LabelRow("old-3", "ann", classes[0])])
    rep = run_nightly(paths, job_cfg, night=NIGHT)  # 2026-03-01: Feb 1 is past 14 days
    assert rep.expired == 9 and rep.status == "created"
    assert "2026-02-01" not in Pool(paths.pool).days()
    found, _ = Pool(paths.pool).get(["old-3", "old-4"])
    assert found.tolist() == ["old-3"]  # kept for retraining; the unlabeled one is gone
    assert not {"old-3", "old-4"} & set(rep.post_ids)
