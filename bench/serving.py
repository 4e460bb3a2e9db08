"""Serving benchmark: gRPC Classify throughput and latency vs the model's raw forward speed.

Starts `python -m server` as a subprocess (micro-batching on: 256 posts / 2 ms; off: max_batch=1;
on-2proc: batching on, two processes sharing the port via SO_REUSEPORT)
with a model trained briefly on ../shared/data/reviews.npz, drives it from a separate client
process (grpc.aio, N calls in flight) over loopback with the real test-split embeddings as
float32 bytes, at concurrency 1/8/64 × batch 1/64. The ceiling is the same model's in-process
`predict` at batch 256. Bounded: each cell runs ≤ --seconds or ≤ --max-calls calls.

    .venv/bin/python bench/serving.py [--data ../shared/data/reviews.npz] [--seconds 3]

Prints a table and writes bench/results/serving.json. Not a test: no timed assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from batch_jobs.datasets import DEFAULT_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = DEFAULT_DATA_DIR / "reviews.npz"
CONCURRENCY = (1, 8, 64)
BATCHES = (1, 64)
# mode → (max_batch, max_delay_ms, server processes sharing the port)
MODES = {"on": ("256", "2", 1), "off": ("1", "0", 1), "on-2proc": ("256", "2", 2)}


# -- client process ---------------------------------------------------------------------------
def _requests(data: Path, batch: int, count: int) -> list:
    from client.encode import arrays_to_posts
    from postclf.v1 import postclf_pb2 as pb

    d = np.load(data)
    rows = np.flatnonzero(d["split"] == "test")
    ids, image, text = d["post_id"][rows].astype(str), d["image"][rows], d["text"][rows]
    out = []
    for k in range(count):
        idx = (np.arange(batch) + k * batch) % len(rows)
        posts = arrays_to_posts(ids[idx], image[idx], text[idx])
        out.append(pb.ClassifyRequest(posts=posts, skip_pool=True))
    return out


async def _cell(target: str, requests: list, conc: int, seconds: float, max_calls: int) -> dict:
    import grpc

    from postclf.v1 import postclf_pb2_grpc as pb_grpc

    latencies: list[float] = []
    failures = 0
    # Separate connections (SO_REUSEPORT spreads connections, not calls, over processes).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(min(conc, 4))]
    stubs = [pb_grpc.PostClassifierStub(c) for c in channels]
    for k, req in enumerate(requests[:conc]):  # warm-up
        await stubs[k % len(stubs)].Classify(req, timeout=30)
    end = time.perf_counter() + seconds
    issued = 0

    async def worker(k: int) -> None:
        nonlocal issued, failures
        stub = stubs[k % len(stubs)]
        while time.perf_counter() < end and issued < max_calls:
            issued += 1
            req = requests[(k + issued) % len(requests)]
            t0 = time.perf_counter()
            try:
                await stub.Classify(req, timeout=30)
            except grpc.aio.AioRpcError:
                failures += 1
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conc)))
    wall = time.perf_counter() - start
    for channel in channels:
        await channel.close()
    lat = np.asarray(latencies) * 1000
    posts = len(latencies) * len(requests[0].posts)
    return {
        "calls": len(latencies),
        "failures": failures,
        "posts_per_s": posts / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def client_main(target: str, data: Path, seconds: float, max_calls: int) -> None:
    """Runs every (batch, concurrency) cell; one JSON line per cell on stdout."""
    for batch in BATCHES:
        requests = _requests(data, batch, 64)
        for conc in CONCURRENCY:
            before = _batch_stats(target)
            row = asyncio.run(_cell(target, requests, conc, seconds, max_calls))
            after = _batch_stats(target)
            passes = after[1] - before[1]
            row |= {
                "batch": batch,
                "concurrency": conc,
                "posts_per_forward": (after[0] - before[0]) / passes if passes else None,
            }
            print(json.dumps(row), flush=True)


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _batch_stats(target: str) -> tuple[float, float]:
    """(posts, forward passes) so far, summed over the server processes' Prometheus endpoints."""
    values = {"postclf_batch_posts_sum": 0.0, "postclf_batch_posts_count": 0.0}
    for port in os.environ["BENCH_METRICS_PORTS"].split(","):
        for line in _scrape(int(port)).splitlines():
            key, _, value = line.partition(" ")
            if key in values:
                values[key] += float(value)
    return values["postclf_batch_posts_sum"], values["postclf_batch_posts_count"]


# -- orchestration ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_model(data: Path, home: Path, epochs: int) -> None:
    """The demo architecture (trident d=128) trained briefly: serving speed, not accuracy."""
    from model.data import Views
    from model.registry import ModelRegistry
    from model.training import LabeledViews, TrainConfig, train_passive

    d = np.load(data)
    rows = d["split"] == "train"
    train = LabeledViews(Views.from_nan_rows(d["image"][rows], d["text"][rows]), d["label"][rows])
    classes = [str(c) for c in d["class_names"]]
    clf = train_passive(train, None, classes, TrainConfig(max_epochs=epochs))
    registry = ModelRegistry(home / "models")
    registry.promote(registry.save(clf))


def ceiling(home: Path, data: Path, seconds: float, torch_threads: int) -> float:
    """In-process `predict` posts/s at batch 256 on the test split (the serving ceiling)."""
    import torch

    from model.data import Views
    from model.registry import ModelRegistry

    clf = ModelRegistry(home / "models").load()
    d = np.load(data)
    rows = np.flatnonzero(d["split"] == "test")[:256]
    views = Views.from_nan_rows(d["image"][rows], d["text"][rows])
    torch.set_num_threads(torch_threads)  # the server's setting
    clf.predict(views)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clf.predict(views, batch_size=256)
        n += len(views)
    return n / (time.perf_counter() - start)


def _start_server(
    home: Path, mode: str, port: int, metrics_port: int, torch_threads: int
) -> subprocess.Popen:
    max_batch, max_delay, processes = MODES[mode]
    env = os.environ | {
        "POSTCLF_HOME": str(home),
        "POSTCLF_HOST": "127.0.0.1",
        "POSTCLF_GRPC_PORT": str(port),
        "POSTCLF_METRICS_PORT": str(metrics_port),
        "POSTCLF_MAX_BATCH": max_batch,
        "POSTCLF_MAX_DELAY_MS": max_delay,
        "POSTCLF_TORCH_THREADS": str(torch_threads),
        "POSTCLF_PROCESSES": str(processes),
        "POSTCLF_SCHEDULER": "0",
        "POSTCLF_BOOTSTRAP": "0",
        "POSTCLF_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env)
    target = f"127.0.0.1:{port}"
    for _ in range(600):
        ok = subprocess.run(
            [sys.executable, "-m", "client", "--target", target, "--timeout", "1", "health"],
            cwd=ROOT,
            capture_output=True,
        )
        if ok.returncode == 0 and _all_up(metrics_port, processes):
            return proc
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not become SERVING")


def _all_up(metrics_port: int, processes: int) -> bool:
    """Every process publishes metrics once it listens (it loads the model before that)."""
    try:
        for i in range(processes):
            _scrape(metrics_port + i)
    except OSError:
        return False
    return True


def run_mode(home: Path, mode: str, args: argparse.Namespace) -> list[dict]:
    port, metrics_port = _free_port(), _free_port()
    server = _start_server(home, mode, port, metrics_port, args.torch_threads)
    try:
        cmd = [
            sys.executable,
            __file__,
            "--client",
            f"127.0.0.1:{port}",
            "--data",
            str(args.data),
            "--seconds",
            str(args.seconds),
            "--max-calls",
            str(args.max_calls),
        ]
        ports = ",".join(str(metrics_port + i) for i in range(MODES[mode][2]))
        env = os.environ | {"BENCH_METRICS_PORTS": ports}
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return [json.loads(line) | {"batching": mode} for line in out.stdout.splitlines()]


def print_table(rows: list[dict], ceil: float) -> None:
    print(
        f"\nceiling: in-process predict, batch 256: {ceil:,.0f} posts/s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    head = (
        "batching",
        "batch",
        "conc",
        "calls",
        "posts/s",
        "p50 ms",
        "p99 ms",
        "posts/fwd",
        "ratio",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        fwd = "" if r["posts_per_forward"] is None else f"{r['posts_per_forward']:.1f}"
        print(
            f"| {r['batching']} | {r['batch']} | {r['concurrency']} | {r['calls']} | "
            f"{r['posts_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {fwd} | "
            f"{r['posts_per_s'] / ceil:.3f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("POSTCLF_BENCH_DATA", DEFAULT_DATA))
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per cell")
    p.add_argument("--max-calls", type=int, default=20_000, help="per cell")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the benchmark model")
    p.add_argument("--torch-threads", type=int, default=1, help="server and ceiling")
    p.add_argument("--client", metavar="TARGET", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(args.client, args.data, args.seconds, args.max_calls)
        return
    import torch

    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="postclf-bench-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        train_model(args.data, home, args.epochs)
        print(f"trained the benchmark model in {time.perf_counter() - t0:.1f} s", flush=True)
        ceil = ceiling(home, args.data, args.seconds, args.torch_threads)
        rows = [row for mode in MODES for row in run_mode(home, mode, args)]
    print_table(rows, ceil)
    for r in rows:
        r["ratio_to_ceiling"] = r["posts_per_s"] / ceil
    out = ROOT / "bench" / "results" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "torch_threads": args.torch_threads,
        "seconds_per_cell": args.seconds,
        "data": str(args.data),
    }
    out.write_text(json.dumps({"ceiling_posts_per_s": ceil, "rows": rows, "meta": meta}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
