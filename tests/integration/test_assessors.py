"""Assessors end to end on a real server: export → three assessors fill the query (one of them
adversarial, through Label Studio's JSON export) → `client submit-labels` → retrain aggregates
with Dawid-Skene → ListAssessors (and `client assessors`) flags the adversarial one."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from batch_jobs.active_step import QueryConfig
from batch_jobs.config import CrowdConfig
from client.cli import EXIT_ERROR, EXIT_REJECTED, main
from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from server import service as service_module
from tests.conftest import TINY_JOBS
from tests.integration.support import serving

CFG = dataclasses.replace(
    TINY_JOBS,
    query=QueryConfig(query_size=30),
    crowd=CrowdConfig(overlap=3, control_share=0.2, min_evidence=3, quality_floor=0.5),
)


@pytest.fixture
def running(tmp_path, bootstrapped_home):
    home = tmp_path / "home"
    shutil.copytree(bootstrapped_home, home)  # v0001, seeded ledger and pool
    with serving(home, CFG, workers=8) as running:
        yield running


def _fill_csv(src: Path, dst: Path, assessor: str, answer) -> None:
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dst, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        for r in rows:
            out.writerow(r | {"label": answer(r["post_id"]), "assessor_id": assessor})


def _label_studio_export(tasks: Path, dst: Path, email: str, answer) -> None:
    """What Label Studio's "Export → JSON" gives after one annotator did every task."""
    doc = json.loads(tasks.read_text())
    for i, task in enumerate(doc):
        choice = {"choices": [answer(task["data"]["post_id"])]}
        task["id"] = i + 1
        task["annotations"] = [
            {
                "id": i + 100,
                "completed_by": {"id": 7, "email": email},
                "was_cancelled": False,
                "result": [
                    {"from_name": "label", "to_name": "post", "type": "choices", "value": choice}
                ],
            }
        ]
    dst.write_text(json.dumps(doc))


def test_adversarial_assessor_is_flagged_and_ds_labels_are_trained_on(
    running, tmp_path, capsys, small_npz, monkeypatch
):
    app, stub, admin = running
    d = small_npz
    classes = [str(c) for c in d["class_names"]]
    truth = {str(p): classes[int(c)] for p, c in zip(d["post_id"], d["label"], strict=True)}

    def wrong(p):  # a consistent liar: always the next class
        return classes[(classes.index(truth[p]) + 1) % len(classes)]

    test = np.flatnonzero(d["split"] == "test")
    posts = arrays_to_posts(d["post_id"][test], d["image"][test], d["text"][test])
    stub.Classify(pb.ClassifyRequest(posts=posts), timeout=60)

    report = json.loads(admin.RunNightly(pb.RunNightlyRequest(), timeout=300).report_json)
    assert report["status"] == "created", report
    folder = Path(report["export_path"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["overlap"] == 3 and manifest["size"] == 30
    with open(folder / "query.csv", newline="") as f:
        exported = list(csv.DictReader(f))
    assert {"label", "assessor_id"} <= set(exported[0]) and "kind" not in exported[0]
    asked = [r["post_id"] for r in exported]
    controls = [p for p in asked if d["split"][list(d["post_id"].astype(str)).index(p)] == "val"]
    assert len(controls) == 6  # 20% of 30: labeled holdout posts, not marked in the export

    target = f"127.0.0.1:{app.port}"
    for who in ("ann", "bob"):
        _fill_csv(folder / "query.csv", tmp_path / f"{who}.csv", who, truth.get)
        assert main(["--target", target, "submit-labels", str(tmp_path / f"{who}.csv")]) == 0
    _label_studio_export(folder / "tasks.json", tmp_path / "eve.json", "eve@example.org", wrong)
    assert main(["--target", target, "submit-labels", str(tmp_path / "eve.json")]) == 0
    capsys.readouterr()

    retrained = json.loads(admin.Retrain(pb.RetrainRequest(force=True), timeout=300).report_json)
    agg = retrained["aggregation"]
    assert agg["methods"]["ds"] == 24, agg  # the 24 new posts have several labels
    assert "eve@example.org" in agg["excluded_assessors"], agg
    assert "control accuracy 0.000" in agg["excluded_assessors"]["eve@example.org"]
    gauge = app.service.metrics.registry.get_sample_value
    assert gauge("postclf_assessor_excluded", {"assessor": "eve@example.org"}) == 1.0
    assert gauge("postclf_assessor_excluded", {"assessor": "ann"}) == 0.0
    assert gauge("postclf_assessor_accuracy", {"assessor": "ann", "source": "control"}) == 1.0

    reply = admin.ListAssessors(pb.ListAssessorsRequest(), timeout=30)
    by_id = {a.assessor_id: a for a in reply.assessors}
    eve, ann = by_id["eve@example.org"], by_id["ann"]
    assert eve.excluded and eve.control_answers == 6 and eve.control_accuracy == 0.0
    assert eve.reason and not ann.excluded and ann.control_accuracy == 1.0
    assert ann.HasField("ds_accuracy") and ann.ds_accuracy > 0.9
    assert reply.quality_floor == 0.5

    assert main(["--target", target, "assessors"]) == 0
    printed = json.loads(capsys.readouterr().out)
    flagged = [a["assessor_id"] for a in printed["assessors"] if a["excluded"]]
    assert flagged == ["eve@example.org"]

    # Dawid-Skene reruns on a new label only: not per call, not on an idempotent resubmission.
    computed = []
    real = service_module.assessor_quality
    monkeypatch.setattr(
        service_module, "assessor_quality", lambda *a: computed.append(1) or real(*a)
    )
    admin.ListAssessors(pb.ListAssessorsRequest(), timeout=30)
    assert main(["--target", target, "submit-labels", str(tmp_path / "ann.csv")]) == 0
    assert admin.ListAssessors(pb.ListAssessorsRequest(), timeout=30) == reply and not computed
    _fill_csv(folder / "query.csv", tmp_path / "ann2.csv", "ann", wrong)  # ann changes her mind
    assert main(["--target", target, "submit-labels", str(tmp_path / "ann2.csv")]) == 0
    after = admin.ListAssessors(pb.ListAssessorsRequest(), timeout=30)
    assert computed == [1] and after != reply


def test_submit_labels_file_errors_are_per_row_and_keep_the_good_rows(
    running, tmp_path, capsys, small_npz
):
    app, _stub, _admin = running
    d = small_npz
    ids = d["post_id"].astype(str)
    classes = [str(c) for c in d["class_names"]]
    target = f"127.0.0.1:{app.port}"

    missing = tmp_path / "nope.csv"
    assert main(["--target", target, "submit-labels", str(missing)]) == EXIT_ERROR
    assert "no such file" in capsys.readouterr().err  # a clear message, no traceback

    headless = tmp_path / "headless.csv"
    headless.write_text("post_id,label\nx,y\n")
    assert main(["--target", target, "submit-labels", str(headless)]) == EXIT_ERROR
    assert "assessor_id" in capsys.readouterr().err

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["--target", target, "submit-labels", str(broken)]) == EXIT_ERROR
    assert "not JSON" in capsys.readouterr().err

    mixed = tmp_path / "mixed.csv"
    mixed.write_text(
        "post_id,label,assessor_id,query_id\n"
        f"{ids[0]},{classes[0]},ann,\n"  # good
        f"{ids[1]},,ann,\n"  # not answered
        f"{ids[2]},{classes[0]},,\n"  # no assessor
        f"{ids[3]},NoSuchClass,ann,\n"  # the server rejects it
        f"{ids[4]},{classes[1]},bob,\n"  # good
    )
    assert main(["--target", target, "submit-labels", str(mixed)]) == EXIT_REJECTED
    out = capsys.readouterr()
    assert "line 3: label is empty" in out.err and "line 4: assessor_id is empty" in out.err
    reply = json.loads(out.out)
    assert reply["accepted"] == 2 and reply["rejected"][0]["post_id"] == ids[3]
    stored = {(p, a) for p, a, _lab, _h in app.service.ledger.labels()}
    assert {(ids[0], "ann"), (ids[4], "bob")} <= stored and (ids[3], "ann") not in stored
