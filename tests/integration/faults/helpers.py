"""What the fault tests do to a server and check afterwards."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from store.ledger import Ledger
from tests.integration.faults.procs import ServerProcess
from tests.integration.support import SmallData

JOB_TIMEOUT_S = 60.0  # the acceptance bound: the next run succeeds within 60 s


def ingest(server: ServerProcess, data: SmallData, idx: np.ndarray) -> None:
    """IngestPosts (durable in pool and ledger when it returns)."""
    with server.channel() as channel:
        classifier, _ = server.stubs(channel)
        classifier.IngestPosts(pb.IngestPostsRequest(posts=data.posts(idx)), timeout=60)


def labels(data: SmallData, idx: np.ndarray, assessor: str) -> list[pb.Label]:
    return [
        pb.Label(post_id=data.post_ids[i], label=data.classes[data.label[i]], assessor_id=assessor)
        for i in idx
    ]


def stored_labels(home: Path) -> set[tuple[str, str, str]]:
    with Ledger(home / "ledger.db") as ledger:
        return {(p, a, lab) for p, a, lab, _hold in ledger.labels()}


@dataclass
class LabelLoad:
    """Submits 5 new labels per call until the server stops answering; keeps what was acked."""

    server: ServerProcess
    data: SmallData
    acked: set[tuple[str, str, str]] = field(default_factory=set)
    calls: int = 0
    enough: threading.Event = field(default_factory=threading.Event)
    error: grpc.StatusCode | None = None

    def run(self, enough_after: int) -> threading.Thread:
        thread = threading.Thread(target=self._loop, args=(enough_after,), daemon=True)
        thread.start()
        return thread

    def _loop(self, enough_after: int) -> None:
        rng = np.random.default_rng(0)
        with self.server.channel() as channel:
            classifier = pb_grpc.PostClassifierStub(channel)
            while True:
                idx = rng.choice(200, size=5, replace=False)
                batch = labels(self.data, idx, f"a{self.calls}")
                try:
                    reply = classifier.SubmitLabels(
                        pb.SubmitLabelsRequest(labels=batch), timeout=30
                    )
                except grpc.RpcError as err:
                    self.error = err.code()
                    self.enough.set()
                    return
                assert reply.accepted == 5, reply
                self.acked |= {(x.post_id, x.assessor_id, x.label) for x in batch}
                self.calls += 1
                if self.calls >= enough_after:
                    self.enough.set()


def run_nightly(server: ServerProcess) -> dict[str, Any]:
    """RunNightly must succeed (OK, a query exported) within the acceptance bound."""
    with server.channel() as channel:
        _, admin = server.stubs(channel)
        reply = admin.RunNightly(pb.RunNightlyRequest(), timeout=JOB_TIMEOUT_S)
    report = json.loads(reply.report_json)
    assert report["status"] in ("created", "existing"), report
    assert (Path(report["export_path"]) / "manifest.json").exists()
    return report


def retrain(server: ServerProcess) -> dict[str, Any]:
    with server.channel() as channel:
        _, admin = server.stubs(channel)
        reply = admin.Retrain(pb.RetrainRequest(force=True), timeout=JOB_TIMEOUT_S)
    report = json.loads(reply.report_json)
    assert report["status"] in ("promoted", "rejected", "candidate"), report
    return report


def call_code(fn: Any) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def job_runs(home: Path) -> list[tuple[str, str]]:
    with Ledger(home / "ledger.db") as ledger:
        return [(r.job, r.status) for r in reversed(ledger.job_runs())]


def lease_holder(home: Path, name: str) -> str | None:
    with Ledger(home / "ledger.db") as ledger:
        holder = ledger.lock_holder(name)
    return None if holder is None else holder[0]


def temp_exports(home: Path) -> list[str]:
    exports = home / "exports"
    return sorted(p.name for p in exports.glob(".tmp-*")) if exports.exists() else []
