"""The nightly query with controls and re-asks: counted out of query_size, recorded in the
ledger with their kind (controls with the known answer), and not marked in the export."""

from __future__ import annotations

import dataclasses
from datetime import date

import pandas as pd

from batch_jobs.config import CrowdConfig
from batch_jobs.labels import LabelRow, submit_labels
from batch_jobs.nightly import run_nightly
from store.ledger import Ledger

from .conftest import true_label

NIGHT = date(2026, 3, 1)


def test_controls_and_relabels_share_the_query_and_are_blind_in_the_export(paths, job_cfg, small):
    classes = small["class_names"].astype(str).tolist()
    test_ids = small["post_id"][small["split"] == "test"].astype(str).tolist()
    unsure = test_ids[0]  # 2 of 3 assessors agree: MV confidence 0.67 < 0.7 → re-asked
    other = classes[(classes.index(true_label(small, unsure)) + 1) % len(classes)]
    with Ledger(paths.ledger) as ledger:
        rows = [LabelRow(unsure, a, true_label(small, unsure)) for a in ("ann", "bob")]
        submit_labels(ledger, classes, [*rows, LabelRow(unsure, "eve", other)])
    crowd = CrowdConfig(control_share=0.2, relabel_share=0.1, aggregate="mv", overlap=2)
    cfg = dataclasses.replace(job_cfg, crowd=crowd, min_new_labels=1000)  # no retrain here
    rep = run_nightly(paths, cfg, night=NIGHT)
    assert rep.status == "created" and rep.query_size == 20
    with Ledger(paths.ledger) as ledger:
        items = ledger.query_items(rep.query_id)
        holdout = dict(zip(rep.post_ids, ledger.holdout_flags(rep.post_ids).tolist(), strict=True))
    kinds = pd.Series([it.kind for it in items]).value_counts().to_dict()
    assert kinds == {"new": 15, "control": 4, "relabel": 1}
    assert [it.rank for it in items] == list(range(20))
    (re,) = [it for it in items if it.kind == "relabel"]
    assert re.post_id == unsure and re.reason.startswith("relabel: aggregated confidence 0.67")
    for it in items:
        if it.kind == "control":  # a labeled holdout post whose answer is known
            assert holdout[it.post_id] and it.gold_label == true_label(small, it.post_id)
        else:
            assert it.gold_label is None
    table = pd.read_csv(paths.exports / rep.query_id / "query.csv", keep_default_na=False)
    assert "kind" not in table.columns and "gold_label" not in table.columns
    shown = dict(zip(table["post_id"], table["reason"], strict=True))
    new_reasons = {it.reason for it in items if it.kind == "new"}
    assert all(shown[it.post_id] in new_reasons for it in items if it.kind == "control")
    assert (table["label"] == "").all() and (table["assessor_id"] == "").all()


def test_no_shares_means_the_model_fills_the_whole_query(paths, job_cfg):
    cfg = dataclasses.replace(job_cfg, crowd=CrowdConfig(relabel_share=0.0))
    rep = run_nightly(paths, cfg, night=NIGHT)
    with Ledger(paths.ledger) as ledger:
        assert {it.kind for it in ledger.query_items(rep.query_id)} == {"new"}
    assert rep.query_size == 20
