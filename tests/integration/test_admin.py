"""Admin calls run the real jobs against the server's own ledger, pool and registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import generate_latest

from postclf.v1 import postclf_pb2 as pb
from tests.integration.support import Running, SmallData, install_model

JOBS = {
    "train": {"d": 16, "max_epochs": 3, "finetune_max_epochs": 2},
    "query": {"query_size": 10},
    "min_new_labels": 1,
}


def test_retrain_nightly_and_list_queries(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    home = tmp_path / "admin"
    install_model(model_registry, home)
    running = start_server(home, jobs=JOBS)
    idx = np.arange(400)
    for part in np.array_split(idx, 4):
        running.classifier.Classify(pb.ClassifyRequest(posts=data.posts(part)))
    labeled = idx[:120]
    labels = [
        pb.Label(post_id=data.post_ids[i], label=data.classes[data.label[i]], assessor_id="a1")
        for i in labeled
    ]
    assert running.classifier.SubmitLabels(pb.SubmitLabelsRequest(labels=labels)).accepted == 120

    retrained = running.admin.Retrain(pb.RetrainRequest(force=True), timeout=120)
    report = json.loads(retrained.report_json)
    assert report["status"] in {"promoted", "rejected", "candidate"}, report
    assert retrained.model_version in {"v0001", "v0002"}

    nightly = running.admin.RunNightly(pb.RunNightlyRequest(), timeout=120)
    night = json.loads(nightly.report_json)
    assert night["status"] == "created", night
    queries = running.admin.ListQueries(pb.ListQueriesRequest()).queries
    assert [q.query_id for q in queries] == [night["query_id"]]
    assert queries[0].size == 10
    # the nightly's accounting reaches the report and the Prometheus metrics
    assert night["eligible"] == 400 - 120 and night["peak_rss_mb"] > 0
    assert {"plan", "score", "export"} <= set(night["timings"])
    text = generate_latest(running.app.service.metrics.registry).decode()
    assert 'postclf_nightly_posts{kind="scored"} 280.0' in text
    assert 'postclf_nightly_stage_seconds{stage="score"}' in text
    assert "postclf_nightly_peak_rss_bytes" in text
