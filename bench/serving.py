"""Serving benchmark: postclf's Classify against a bare gRPC echo server and the model itself.

Each round starts, one after the other, bare echo servers (bench/echo_server.py: the same
grpcio, server kind, event loop and message options, no model; also on the standard asyncio
loop and as the old thread-pool server) and `python -m server` (micro-batching on; also on the
standard asyncio loop, without the pool linger (20 ms by default), and as two processes
sharing the port via SO_REUSEPORT), with a model trained briefly on
../shared/data/reviews.npz, and drives each from a separate client process (grpc.aio, N calls in
flight) over loopback with real test-split embeddings as float32 bytes. Cells: 1 post per call
at concurrency 1 and 64 (pooled, and with skip_pool), 64 posts per call at 8 (both) and 64
in flight.
Server CPU per call is read from /proc (the server and its children). Rounds alternate the
servers; the summary takes medians over rounds and prints the ratios we set targets on:
1-post calls/s and p99 against echo's, 64-post posts/s against the served model in process
(`FoldedClassifier.predict`, and the module walk for reference) at batch 64, CPU per call
against echo's, and 2-process scaling, with the load average of each round. Beside them, the
best the two throughput ratios could read here if postclf's own per-call work were free (echo's
gRPC cost plus the forward pass at the batch the server formed, on one process's core):
a target above that ceiling cannot be met by tuning postclf's code on this machine.

    .venv/bin/python -m bench.serving [--rounds 3] [--seconds 3]

Prints tables and writes bench/results/serving.json. Not a test: no timed assertions.
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

from batch_jobs.datasets import DEFAULT_DATA_DIR, read_arrays

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = DEFAULT_DATA_DIR / "reviews.npz"
# (posts per call, calls in flight, skip_pool)
CELLS = (
    (1, 1, False),
    (1, 64, False),
    (1, 64, True),
    (64, 8, False),
    (64, 8, True),
    (64, 64, False),
)
# mode → (max_batch, max_delay_ms, server processes sharing the port, pool linger ms, event
# loop, offload_posts); "echo" = the bare asyncio server on uvloop (postclf's kind and loop: the
# yardstick), "echo-asyncio" the same on the standard library's loop, "echo-threads" the bare
# thread-pool server postclf used before; "postclf-linger0" writes pool entries without
# gathering them; "postclf-inline" runs every forward pass on the loop (no forward thread).
ECHOES = {"echo": ["--loop", "uvloop"], "echo-asyncio": ["--loop", "asyncio"],
          "echo-threads": ["--threads"]}  # fmt: skip
MODES: dict[str, tuple[str, str, int, str, str, str] | None] = {
    **{name: None for name in ECHOES},
    "postclf": ("256", "2", 1, "20", "uvloop", "32"),
    "postclf-asyncio": ("256", "2", 1, "20", "asyncio", "32"),
    "postclf-linger0": ("256", "2", 1, "0", "uvloop", "32"),
    "postclf-inline": ("256", "2", 1, "20", "uvloop", "0"),
    "postclf-2proc": ("256", "2", 2, "20", "uvloop", "32"),
}


# -- client process ---------------------------------------------------------------------------
def _requests(data: Path, batch: int, count: int, skip_pool: bool) -> list:
    from client.encode import arrays_to_posts
    from postclf.v1 import postclf_pb2 as pb

    d = read_arrays(Path(data))
    rows = np.flatnonzero(d["split"] == "test")
    ids, image, text = d["post_id"][rows].astype(str), d["image"][rows], d["text"][rows]
    out = []
    for k in range(count):
        idx = (np.arange(batch) + k * batch) % len(rows)
        # Fresh ids per request, so pooling does real writes (a known id is only updated).
        ids = np.char.add(d["post_id"][rows].astype(str), f"-{os.getpid()}-{k}")
        posts = arrays_to_posts(ids[idx], image[idx], text[idx])
        out.append(pb.ClassifyRequest(posts=posts, skip_pool=skip_pool))
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
        "calls_total": issued + len(requests[:conc]),  # the server CPU window includes warm-up
        "calls_per_s": len(latencies) / wall,
        "failures": failures,
        "posts_per_s": posts / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def client_main(target: str, data: Path, seconds: float, max_calls: int) -> None:
    """Runs every cell; one JSON line per cell on stdout."""
    server_pid = int(os.environ["BENCH_SERVER_PID"])
    for batch, conc, skip_pool in CELLS:
        requests = _requests(data, batch, 64, skip_pool)
        before, cpu0 = _batch_stats(), _cpu_seconds(server_pid)
        row = asyncio.run(_cell(target, requests, conc, seconds, max_calls))
        cpu = _cpu_seconds(server_pid) - cpu0
        after = _batch_stats()
        passes = after[1] - before[1]
        row |= {
            "batch": batch,
            "concurrency": conc,
            "skip_pool": skip_pool,
            "server_cpu_us_per_call": 1e6 * cpu / max(row["calls_total"], 1),
            "posts_per_forward": (after[0] - before[0]) / passes if passes else None,
        }
        print(json.dumps(row), flush=True)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants so far (from /proc)."""
    parent_of: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [p for p, ppid in parent_of.items() if ppid in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    ticks = 0
    for p in tree:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _batch_stats() -> tuple[float, float]:
    """(posts, forward passes) so far, summed over the server processes' Prometheus endpoints."""
    values = {"postclf_batch_posts_sum": 0.0, "postclf_batch_posts_count": 0.0}
    for port in filter(None, os.environ["BENCH_METRICS_PORTS"].split(",")):
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

    d = read_arrays(Path(data))
    rows = d["split"] == "train"
    train = LabeledViews(Views.from_nan_rows(d["image"][rows], d["text"][rows]), d["label"][rows])
    classes = [str(c) for c in d["class_names"]]
    clf = train_passive(train, None, classes, TrainConfig(max_epochs=epochs))
    registry = ModelRegistry(home / "models")
    registry.promote(registry.save(clf))


def ceiling(home: Path, data: Path, seconds: float, torch_threads: int, batch: int) -> dict:
    """In-process posts/s at `batch` on the test split: the served path (`FoldedClassifier`,
    what Classify runs) and the module walk (`Classifier.predict`), with the server's threads."""
    import torch
    from threadpoolctl import threadpool_limits

    from model.data import Views
    from model.folded import FoldedClassifier
    from model.registry import ModelRegistry

    clf = ModelRegistry(home / "models").load()
    folded = FoldedClassifier(clf)
    d = read_arrays(Path(data))
    rows = np.flatnonzero(d["split"] == "test")[:batch]
    views = Views.from_nan_rows(d["image"][rows], d["text"][rows])
    torch.set_num_threads(torch_threads)  # the server's settings
    threadpool_limits(torch_threads, user_api="blas")
    out = {}
    for name, run in (("folded", folded.predict), ("module", clf.predict)):
        run(views)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run(views)
            n += len(views)
        out[name] = n / (time.perf_counter() - start)
    return out


def _start_server(
    home: Path, mode: str, port: int, metrics_port: int, torch_threads: int
) -> subprocess.Popen:
    settings = MODES[mode]
    if settings is None:
        cmd = [sys.executable, "-m", "bench.echo_server", "--port", str(port), *ECHOES[mode]]
        proc = subprocess.Popen(cmd, cwd=ROOT)
        _wait_listening(port, proc)
        return proc
    max_batch, max_delay, processes, linger, event_loop, offload = settings
    env = os.environ | {
        "POSTCLF_HOME": str(home),
        "POSTCLF_HOST": "127.0.0.1",
        "POSTCLF_GRPC_PORT": str(port),
        "POSTCLF_METRICS_PORT": str(metrics_port),
        "POSTCLF_MAX_BATCH": max_batch,
        "POSTCLF_MAX_DELAY_MS": max_delay,
        "POSTCLF_TORCH_THREADS": str(torch_threads),
        "POSTCLF_PROCESSES": str(processes),
        "POSTCLF_POOL_LINGER_MS": linger,
        "POSTCLF_EVENT_LOOP": event_loop,
        "POSTCLF_OFFLOAD_POSTS": offload,
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


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("echo server did not start")


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
    processes = 0 if MODES[mode] is None else MODES[mode][2]  # type: ignore[index]
    try:
        cmd = [
            sys.executable,
            "-m",
            "bench.serving",
            "--client",
            f"127.0.0.1:{port}",
            "--data",
            str(args.data),
            "--seconds",
            str(args.seconds),
            "--max-calls",
            str(args.max_calls),
        ]
        ports = ",".join(str(metrics_port + i) for i in range(processes))
        env = os.environ | {"BENCH_METRICS_PORTS": ports, "BENCH_SERVER_PID": str(server.pid)}
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return [json.loads(line) | {"mode": mode} for line in out.stdout.splitlines()]


def _key(r: dict) -> tuple:
    return (r["mode"], r["batch"], r["concurrency"], r["skip_pool"])


def medians(rows: list[dict]) -> dict[tuple, dict]:
    """Per (mode, cell): the median over rounds of each measured number."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    fields = ("calls_per_s", "posts_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_call")
    out: dict[tuple, dict] = {}
    for k, rs in groups.items():
        passes = [r["posts_per_forward"] for r in rs if r.get("posts_per_forward")]
        out[k] = {f: float(np.median([r[f] for r in rs])) for f in fields}
        out[k] |= {
            "posts_per_forward": float(np.median(passes)) if passes else None,
            "rounds": len(rs),
        }
    return out


def print_cells(med: dict[tuple, dict]) -> None:
    head = ("server", "posts/call", "in flight", "pool", "calls/s", "posts/s", "p50 ms",
            "p99 ms", "CPU µs/call", "posts/pass", "rounds")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (mode, batch, conc, skip), m in med.items():
        pool = "—" if mode.startswith("echo") else ("skip" if skip else "on")
        per_pass = "—" if m["posts_per_forward"] is None else f"{m['posts_per_forward']:.1f}"
        print(
            f"| {mode} | {batch} | {conc} | {pool} | {m['calls_per_s']:,.0f} | "
            f"{m['posts_per_s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
            f"{m['server_cpu_us_per_call']:.0f} | {per_pass} | {m['rounds']} |"
        )


def forward_us_per_post(ceilings: dict[int, dict], posts: float) -> float:
    """In-process µs per post of the served forward pass at `posts` per pass, interpolated
    (log-log) between the measured batch sizes."""
    sizes = sorted(ceilings)
    x = np.log(np.asarray(sizes, float))
    y = np.log([1e6 / ceilings[b]["folded"] for b in sizes])
    return float(np.exp(np.interp(np.log(max(posts, 1.0)), x, y)))


def target_ceilings(med: dict[tuple, dict], ceilings: dict[int, dict]) -> dict[str, float]:
    """The best each throughput target could read on this machine if postclf's own per-call
    work (decoding, validation, batching, pooling, the response) were free: one server process
    (its Python path holds one GIL, so about one core) still pays echo's server CPU per call
    plus the forward pass at the posts per pass it formed, and is driven by the same client,
    which caps it at echo's rate. Above 1.0 the target is reachable in principle."""
    out = {}
    for name, cell, yardstick in (  # yardstick: what the target divides by, posts/s
        ("1post_calls_per_s_vs_echo", (1, 64, False), med[("echo", 1, 64, False)]["calls_per_s"]),
        ("64post_posts_per_s_vs_predict_at_64", (64, 8, False), ceilings[64]["folded"]),
    ):
        echo, served = med[("echo", *cell)], med[("postclf", *cell)]
        posts = cell[0]
        forward = posts * forward_us_per_post(ceilings, served["posts_per_forward"] or posts)
        calls_per_s = min(echo["calls_per_s"], 1e6 / (echo["server_cpu_us_per_call"] + forward))
        out[f"{name}_if_postclf_work_were_free"] = calls_per_s * posts / yardstick
    return out


def ratios(med: dict[tuple, dict], predict64: dict, predict256: dict) -> dict[str, float]:
    """The numbers the targets are set on (see the module docstring); all modes must have run."""
    echo1, echo64 = med[("echo", 1, 64, False)], med[("echo", 64, 8, False)]
    one, one_skip = med[("postclf", 1, 64, False)], med[("postclf", 1, 64, True)]
    aio = med[("postclf-asyncio", 1, 64, False)]
    two = med[("postclf-2proc", 1, 64, False)]
    big = max(
        med[("postclf", 64, 8, False)]["posts_per_s"],
        med[("postclf", 64, 64, False)]["posts_per_s"],
    )
    big2 = max(
        med[("postclf-2proc", 64, 8, False)]["posts_per_s"],
        med[("postclf-2proc", 64, 64, False)]["posts_per_s"],
    )
    return {
        "1post_calls_per_s_vs_echo (target >= 0.7)": one["calls_per_s"] / echo1["calls_per_s"],
        "1post_skip_pool_calls_per_s_vs_echo": one_skip["calls_per_s"] / echo1["calls_per_s"],
        "1post_calls_per_s_vs_thread_pool_echo": one["calls_per_s"]
        / med[("echo-threads", 1, 64, False)]["calls_per_s"],
        "1post_calls_per_s_uvloop_vs_asyncio_loop": one["calls_per_s"] / aio["calls_per_s"],
        "1post_skip_pool_calls_per_s_uvloop_vs_asyncio_loop": one_skip["calls_per_s"]
        / med[("postclf-asyncio", 1, 64, True)]["calls_per_s"],
        "64post_posts_per_s_uvloop_vs_asyncio_loop": med[("postclf", 64, 8, False)]["posts_per_s"]
        / med[("postclf-asyncio", 64, 8, False)]["posts_per_s"],
        "1post_calls_per_s_asyncio_loop_vs_asyncio_echo": aio["calls_per_s"]
        / med[("echo-asyncio", 1, 64, False)]["calls_per_s"],
        "echo_1post_calls_per_s_uvloop_vs_asyncio_loop": echo1["calls_per_s"]
        / med[("echo-asyncio", 1, 64, False)]["calls_per_s"],
        "1post_p99_vs_echo (target <= 2)": one["p99_ms"] / echo1["p99_ms"],
        "64post_posts_per_s_vs_predict_at_64 (target >= 0.8)": big / predict64["folded"],
        "64post_skip_pool_posts_per_s_vs_predict_at_64": med[("postclf", 64, 8, True)][
            "posts_per_s"
        ]
        / predict64["folded"],
        "64post_posts_per_s_vs_module_predict_at_64": big / predict64["module"],
        "64post_posts_per_s_vs_predict_at_256": big / predict256["folded"],
        "1post_linger0_calls_per_s_vs_echo": med[("postclf-linger0", 1, 64, False)]["calls_per_s"]
        / echo1["calls_per_s"],
        "64post_posts_per_s_forward_thread_vs_inline": med[("postclf", 64, 8, False)]["posts_per_s"]
        / med[("postclf-inline", 64, 8, False)]["posts_per_s"],
        "1post_cpu_per_call_vs_echo": one["server_cpu_us_per_call"]
        / echo1["server_cpu_us_per_call"],
        "64post_cpu_per_call_vs_echo": med[("postclf", 64, 8, False)]["server_cpu_us_per_call"]
        / echo64["server_cpu_us_per_call"],
        "2proc_vs_1proc_1post_calls_per_s": two["calls_per_s"] / one["calls_per_s"],
        "2proc_vs_1proc_64post_posts_per_s": big2 / big,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("POSTCLF_BENCH_DATA", DEFAULT_DATA))
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per cell")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians over them)")
    p.add_argument("--max-calls", type=int, default=20_000, help="per cell")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the benchmark model")
    p.add_argument("--torch-threads", type=int, default=1, help="server and ceiling")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of servers to run")
    p.add_argument("--client", metavar="TARGET", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(args.client, args.data, args.seconds, args.max_calls)
        return
    import torch

    torch.set_num_threads(args.torch_threads)
    rows: list[dict] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="postclf-bench-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        train_model(args.data, home, args.epochs)
        print(f"trained the benchmark model in {time.perf_counter() - t0:.1f} s", flush=True)
        ceilings = {  # the small batches: what a pass of gathered 1-post calls costs
            b: ceiling(home, args.data, args.seconds, args.torch_threads, b)
            for b in (1, 4, 16, 64, 256)
        }
        for r in range(args.rounds):
            for mode in args.modes.split(","):
                rows += [row | {"round": r} for row in run_mode(home, mode, args)]
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}/{args.rounds} done, load average {loads[-1]:.1f}", flush=True)
    med = medians(rows)
    print(
        "\nin-process predict, posts/s (folded, the served path / module walk): "
        + ", ".join(
            f"{c['folded']:,.0f} / {c['module']:,.0f} at batch {b}" for b, c in ceilings.items()
        )
        + f"; {os.cpu_count()} CPUs; load average per round "
        + ", ".join(f"{x:.1f}" for x in loads)
        + "\n"
    )
    print_cells(med)
    full = args.modes == ",".join(MODES)
    rat = ratios(med, ceilings[64], ceilings[256]) | target_ceilings(med, ceilings) if full else {}
    print()
    for name, value in rat.items():
        print(f"{name}: {value:.2f}")
    out = ROOT / "bench" / "results" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "load_avg_per_round": loads,
        "torch_threads": args.torch_threads,
        "seconds_per_cell": args.seconds,
        "rounds": args.rounds,
        "data": str(args.data),
    }
    doc = {
        "predict_posts_per_s": ceilings,
        "medians": [
            dict(zip(("mode", "batch", "concurrency", "skip_pool"), k, strict=True)) | v
            for k, v in med.items()
        ],
        "ratios": rat,
        "rows": rows,
        "meta": meta,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
