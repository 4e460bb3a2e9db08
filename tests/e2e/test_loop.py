"""The whole loop through gRPC: classify → nightly query export → labels by RPC → retrain →
a promoted model is served (or a rejection is recorded with its reason).

A real server on a loopback port, a real SQLite ledger, a tiny model bootstrapped from
reviews_small.npz (train split; val = the gate's holdout set).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from batch_jobs.active_step import QueryConfig
from batch_jobs.bootstrap import ensure_model
from batch_jobs.config import JobConfig, Paths
from batch_jobs.export import read_export
from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from store.ledger import Ledger
from tests.conftest import TINY_TRAIN
from tests.integration.support import serving

pytestmark = pytest.mark.slow  # `make test-fast` (-m 'not slow') leaves it out

CFG = JobConfig(
    query=QueryConfig(query_size=20),
    train=TINY_TRAIN,
    min_new_labels=10,
)


@pytest.fixture
def running(tmp_path, data_dir: Path):
    home = tmp_path / "home"
    assert ensure_model(Paths(home), CFG, data_dir / "reviews_small.npz") == "v0001"
    with serving(home, CFG, workers=16) as running:
        yield running


def wait_for_model(stub, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).serving_version
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_loop_through_grpc(running, small_npz):
    app, clf_stub, admin = running
    d = small_npz
    classes = [str(c) for c in d["class_names"]]
    truth = {str(p): classes[int(c)] for p, c in zip(d["post_id"], d["label"], strict=True)}
    test = np.flatnonzero(d["split"] == "test")
    assert wait_for_model(clf_stub) == "v0001"

    # 1. other services classify a few hundred posts; they enter the pool and the ledger
    for part in np.array_split(test, 3):
        posts = arrays_to_posts(d["post_id"][part], d["image"][part], d["text"][part])
        reply = clf_stub.Classify(pb.ClassifyRequest(posts=posts), timeout=30)
        assert len(reply.predictions) == len(part)
        assert {p.model_version for p in reply.predictions} == {"v0001"}

    # 2. the nightly job (admin RPC) exports a query over the unlabeled classified posts
    first = admin.RunNightly(pb.RunNightlyRequest(), timeout=300)
    report = json.loads(first.report_json)
    assert report["status"] == "created", report
    assert report["eligible"] == len(test)
    table, manifest = read_export(Path(report["export_path"]))
    assert len(table) == 20 and manifest["model_version"] == "v0001"
    asked = table["post_id"].tolist()
    assert set(asked) <= {str(p) for p in d["post_id"][test]}

    # 3. assessors answer by RPC from the fixture's true labels (one bad label is reported)
    labels = [
        pb.Label(post_id=p, label=truth[p], assessor_id="e2e", query_id=report["query_id"])
        for p in asked
    ]
    bad = pb.Label(post_id=asked[0], label="NoSuchClass", assessor_id="e2e")
    got = clf_stub.SubmitLabels(pb.SubmitLabelsRequest(labels=[*labels, bad]), timeout=30)
    assert (got.accepted, got.duplicates) == (20, 0)
    assert [(r.index, r.field) for r in got.rejected] == [(20, "labels[20].label")]
    again = clf_stub.SubmitLabels(pb.SubmitLabelsRequest(labels=labels), timeout=30)
    assert (again.accepted, again.duplicates) == (0, 20)  # a retry is safe

    # 4. trigger again: the labels are folded in, gated, and the outcome is served/recorded
    second = admin.RunNightly(pb.RunNightlyRequest(), timeout=300)
    report2 = json.loads(second.report_json)
    assert report2["status"] == "existing" and report2["query_id"] == report["query_id"]
    outcome = report2["retrain"]
    assert outcome["status"] in {"promoted", "rejected"}, outcome
    assert outcome["new_labels"] == 20 and outcome["gate_size"] > 0 and outcome["reason"]
    with Ledger(Path(app.cfg.home) / "ledger.db") as ledger:
        record = ledger.get_model(outcome["version"])
    assert (record.status, record.reason) == (outcome["status"], outcome["reason"])
    served = clf_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).serving_version
    if outcome["status"] == "promoted":
        assert second.model_version == served == outcome["version"] == "v0002"
        posts = arrays_to_posts(d["post_id"][test[:5]], d["image"][test[:5]], d["text"][test[:5]])
        reply = clf_stub.Classify(pb.ClassifyRequest(posts=posts, skip_pool=True), timeout=30)
        assert {p.model_version for p in reply.predictions} == {"v0002"}
    else:
        assert served == "v0001"
    listed = admin.ListQueries(pb.ListQueriesRequest(), timeout=10).queries
    assert [q.query_id for q in listed] == [report["query_id"]]
