"""Chaos: N random kill -9 trials of a real server under mixed load; acknowledged vs found.

Run: .venv/bin/python -m bench.chaos [--trials 10] [--seed 0] [--data FILE] [--home DIR]

Each trial starts `python -m server` on the same POSTCLF_HOME (the first start bootstraps a
tiny model from --data), runs three client threads (SubmitLabels, IngestPosts, Classify
into the pool) and kills the server with SIGKILL after a random 0.5-3 s. After every trial
the next start must reach SERVING; at the end a RunNightly must succeed. Then every
acknowledged item is looked up in the stores:
  labels    (post, assessor, label) rows in the ledger;
  ingest    posts in the ledger and in the pool;
  classify  posts in the ledger and in the pool (the API says classified posts enter it).
Prints a table per kind and writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from batch_jobs.datasets import DEFAULT_DATA_DIR, read_arrays
from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from store.ledger import Ledger
from store.pool import Pool

ROOT = Path(__file__).resolve().parents[1]
DATA = DEFAULT_DATA_DIR / "reviews_small.npz"
JOBS_TOML = """
[jobs]
min_new_labels = 1
[jobs.train]
d = 16
max_epochs = 3
finetune_max_epochs = 2
[jobs.query]
query_size = 10
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Acked:
    labels: set[tuple[str, str, str]] = field(default_factory=set)
    ingest: set[str] = field(default_factory=set)
    classify: set[str] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=lambda: {"labels": 0, "ingest": 0, "classify": 0})


class Data:
    def __init__(self, path: Path) -> None:
        d = read_arrays(Path(path))
        self.ids = d["post_id"].astype(str)
        self.image, self.text = d["image"], d["text"]
        self.split = d["split"].astype(str)
        names = d["class_names"].astype(str)
        self.label = names[d["label"]]

    def posts(self, rows: np.ndarray, ids: list[str]) -> list[pb.Post]:
        return arrays_to_posts(ids, self.image[rows], self.text[rows])


def _start(home: Path, port: int, data: Path, log: Path) -> subprocess.Popen:
    config = home / "chaos.toml"
    config.write_text(JOBS_TOML)
    env = dict(os.environ) | {
        "POSTCLF_CONFIG": str(config),
        "POSTCLF_HOME": str(home),
        "POSTCLF_HOST": "127.0.0.1",
        "POSTCLF_GRPC_PORT": str(port),
        "POSTCLF_METRICS_PORT": "",
        "POSTCLF_SCHEDULER": "0",
        "POSTCLF_BOOTSTRAP": "1",
        "POSTCLF_BOOTSTRAP_DATA": str(data),
        "POSTCLF_MODEL_POLL_S": "0.2",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def _wait_serving(proc: subprocess.Popen, target: str, timeout: float = 300) -> float:
    t0 = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode} before SERVING")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - t0
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError("not SERVING in time")


KINDS = ("labels", "ingest", "classify")


def _load(kind: str, target: str, data: Data, trial: int, acked: Acked, stop: threading.Event):
    rng = np.random.default_rng([trial, KINDS.index(kind)])
    seeds = np.flatnonzero(data.split != "test")  # posts the bootstrap put in the ledger
    n = 0
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PostClassifierStub(channel)
        while not stop.is_set():
            rows = rng.choice(len(data.ids), size=8, replace=False)
            try:
                if kind == "labels":
                    rows = rng.choice(seeds, size=5, replace=False)
                    who = f"chaos-{trial}-{n}"
                    batch = [(str(data.ids[r]), who, str(data.label[r])) for r in rows]
                    msg = [pb.Label(post_id=p, assessor_id=a, label=lab) for p, a, lab in batch]
                    stub.SubmitLabels(pb.SubmitLabelsRequest(labels=msg), timeout=10)
                    acked.labels |= set(batch)
                else:
                    ids = [f"chaos-{kind}-{trial}-{n}-{i}" for i in range(len(rows))]
                    posts = data.posts(rows, ids)
                    if kind == "ingest":
                        stub.IngestPosts(pb.IngestPostsRequest(posts=posts), timeout=10)
                        acked.ingest |= set(ids)
                    else:
                        stub.Classify(pb.ClassifyRequest(posts=posts), timeout=10)
                        acked.classify |= set(ids)
                acked.calls[kind] += 1
                n += 1
            except grpc.RpcError:
                return  # the server is gone


def _found(home: Path, acked: Acked) -> dict[str, dict[str, int]]:
    pool = Pool(home / "pool")
    pooled = {
        p
        for ref in pool.chunks(pool.segments(), 65_536)
        for p in pool.ids(ref.segment, np.arange(ref.start, ref.stop))
    }
    with Ledger(home / "ledger.db") as ledger:
        stored = {(p, a, lab) for p, a, lab, _h in ledger.labels()}
        known = {k: ledger.known_posts(sorted(getattr(acked, k))) for k in ("ingest", "classify")}
    out = {
        "labels": {
            "acknowledged": len(acked.labels),
            "found": len(acked.labels & stored),
        }
    }
    for kind in ("ingest", "classify"):
        ids = getattr(acked, kind)
        out[kind] = {
            "acknowledged": len(ids),
            "found": int(known[kind].sum()),
            "in_pool": len(ids & pooled),
        }
    return out


def _run_nightly(target: str) -> dict[str, Any]:
    with grpc.insecure_channel(target) as channel:
        admin = pb_grpc.AdminStub(channel)
        reply = admin.RunNightly(pb.RunNightlyRequest(), timeout=60)
    return json.loads(reply.report_json)


def chaos(trials: int, seed: int, data_path: Path, home: Path) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    data, acked = Data(data_path), Acked()
    port, log = _free_port(), home / "chaos-server.log"
    home.mkdir(parents=True, exist_ok=True)
    starts = []
    for trial in range(trials):
        proc = _start(home, port, data_path, log)
        starts.append(_wait_serving(proc, f"127.0.0.1:{port}"))
        stop = threading.Event()
        threads = [
            threading.Thread(target=_load, args=(k, f"127.0.0.1:{port}", data, trial, acked, stop))
            for k in KINDS
        ]
        for t in threads:
            t.start()
        time.sleep(float(rng.uniform(0.5, 3.0)))  # the random moment of the crash
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
        print(f"trial {trial + 1}/{trials}: killed; calls so far {acked.calls}", flush=True)
    proc = _start(home, port, data_path, log)
    starts.append(_wait_serving(proc, f"127.0.0.1:{port}"))
    try:
        t0 = time.monotonic()
        nightly = _run_nightly(f"127.0.0.1:{port}")
        nightly_s = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return {
        "trials": trials,
        "seed": seed,
        "calls": acked.calls,
        "kinds": _found(home, acked),
        "start_to_serving_s": starts,
        "final_nightly": {"status": nightly["status"], "seconds": nightly_s},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--home", type=Path, default=None, help="default: a fresh temp folder")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        home = args.home or Path(tmp) / "home"
        result = chaos(args.trials, args.seed, args.data, home)
    print(f"\n{'kind':<10}{'acknowledged':>14}{'found':>8}{'missing':>9}{'in pool':>9}")
    for kind, row in result["kinds"].items():
        missing = row["acknowledged"] - row["found"]
        pool = row.get("in_pool", "-")
        print(f"{kind:<10}{row['acknowledged']:>14}{row['found']:>8}{missing:>9}{pool:>9}")
    starts = result["start_to_serving_s"]
    print(
        f"\nstarts reaching SERVING: {len(starts)}/{args.trials + 1} "
        f"(max {max(starts):.1f} s); final RunNightly: {result['final_nightly']['status']} "
        f"in {result['final_nightly']['seconds']:.1f} s"
    )
    out = ROOT / "bench" / "results" / "chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    lost_labels = result["kinds"]["labels"]["acknowledged"] - result["kinds"]["labels"]["found"]
    return 0 if lost_labels == 0 and result["final_nightly"]["status"] != "skipped" else 1


if __name__ == "__main__":
    raise SystemExit(main())
