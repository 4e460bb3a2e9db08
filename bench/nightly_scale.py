"""The real nightly job on 1M–10M-post pools: per-stage seconds, posts/s and peak RSS.

Run: .venv/bin/python -m bench.nightly_scale [--sizes 1000000,10000000] [--home DIR]
         [--configs margin,margin+kmeans+balance,bald,bald+kmeans+balance] [--ray-at 1000000]
         [--ray-config margin+kmeans+balance+typical]   (+typical: the cold start, +control)

The pool is **synthetic from real rows**: the reviews rows (both views, missing views kept
missing) tiled to the size asked, each copy with N(0, 0.01²) noise per element and
re-normalised to unit L2. The demo model is bootstrapped from reviews.npz as `make run` does
(its seed posts are labeled, so they are excluded as in production). The pool grows in place
from one size to the next, so 10M reuses the 1M rows.

Each configuration runs `batch_jobs.nightly.run_nightly` end to end (close → expire → retrain
→ plan → score → select → record → export) in a fresh subprocess for its own night, so its
peak RSS (`ru_maxrss`) is the job's alone. Ray runs (local mode) report the driver's RSS; its
actors are separate processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from batch_jobs.datasets import DEFAULT_DATA_DIR, read_arrays

DATA = DEFAULT_DATA_DIR / "reviews.npz"
NOISE = 0.01
BLOCK = 1 << 16  # rows per append (= one pool segment)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.nightly_scale", description=__doc__)
    ap.add_argument("--home", type=Path, default=Path("/tmp/postclf-scale"))
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--configs", default="margin,margin+kmeans+balance,bald,bald+kmeans+balance")
    ap.add_argument("--ray-at", type=int, default=1_000_000, help="pool size for the ray runs")
    ap.add_argument("--ray-config", default="margin")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the local runs")
    ap.add_argument("--mc-samples", type=int, default=20)
    ap.add_argument("--chunk-rows", type=int, default=16_384)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, default=Path("bench/results/nightly_scale.json"))
    ap.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)  # one job, internal
    return ap.parse_args(argv)


def job_config(spec: dict):  # type: ignore[no-untyped-def]  # lazy: the parent loads no torch
    from batch_jobs.config import EngineConfig, JobConfig, QueryConfig

    strategy, *stages = spec["config"].split("+")
    query = QueryConfig(
        strategy=strategy,
        diversity="kmeans" if "kmeans" in stages else None,
        balance="balance" in stages,
        mc_samples=spec["mc_samples"],
        # The named config on every night, not the default's cold start; `+typical` forces
        # the cold start on every night (the demo home holds more labels than the default's
        # 1,000), `+control` adds the default's 5% random share.
        cold_start_labels=1 << 30 if "typical" in stages else 0,
        random_share=0.05 if "control" in stages else 0.0,
    )
    engine = EngineConfig(
        engine=spec["runner"], workers=spec["workers"], torch_threads=1,
        chunk_rows=spec["chunk_rows"],
    )  # fmt: skip
    return JobConfig(query=query, engine=engine, pool_dtype=spec["dtype"], score_days=14)


def run_one(spec_path: Path) -> None:
    """Child process: one nightly run; writes its report (+ wall seconds) next to the spec."""
    import torch

    from batch_jobs.config import Paths
    from batch_jobs.nightly import run_nightly

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    if spec["runner"] == "ray":
        import ray

        ray.init(num_cpus=spec["workers"], include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    rep = run_nightly(Paths(Path(spec["home"])), job_config(spec),
                      night=date.fromisoformat(spec["night"]), progress=True)  # fmt: skip
    wall = time.perf_counter() - t0
    out = rep.to_dict() | {"wall_s": wall}
    spec_path.with_suffix(".out.json").write_text(json.dumps(out, default=str))


def ensure_home(home: Path, dtype: str) -> None:
    from batch_jobs.bootstrap import ensure_model
    from batch_jobs.config import JobConfig, Paths

    print(f"bootstrapping the demo model in {home} (trains on the reviews train split)")
    ensure_model(Paths(home), JobConfig(pool_dtype=dtype), DATA)


def grow_pool(home: Path, size: int, dtype: str) -> int:
    """Append synthetic rows until the pool holds `size` posts; returns the rows added."""
    from model.data import Views
    from store.pool import Pool

    pool = Pool(home / "pool", dtype)
    have = len(pool)
    d = read_arrays(Path(DATA))
    image, text = d["image"].astype(np.float32), d["text"].astype(np.float32)
    rng = np.random.default_rng(have)
    t0 = time.perf_counter()
    for start in range(have, size, BLOCK):
        n = min(BLOCK, size - start)
        src = rng.integers(0, image.shape[0], n)
        arrays = []
        for x in (image, text):
            y = x[src]
            y += NOISE * rng.standard_normal(y.shape, dtype=np.float32)  # NaN stays NaN
            y /= np.linalg.norm(y, axis=1, keepdims=True)
            arrays.append(y)
        ids = [f"syn-{i:09d}" for i in range(start, start + n)]
        pool.append(ids, Views.from_nan_rows(*arrays))
    pool.close()
    print(f"pool {have:,} -> {size:,} rows in {time.perf_counter() - t0:.0f} s")
    return size - have


def launch(args: argparse.Namespace, spec: dict) -> dict:
    spec_path = args.home / f"run-{spec['night']}.json"
    spec_path.write_text(json.dumps(spec))
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "bench.nightly_scale", "--run", str(spec_path)]
    subprocess.run(cmd, check=True)
    out = json.loads(spec_path.with_suffix(".out.json").read_text())
    out["load_before"], out["load_after"] = load_before, os.getloadavg()[0]
    return spec | out


def row(r: dict) -> str:
    t = r["timings"]
    label = f"{r['config']} [{r['runner']}×{r['workers']}]"
    return (
        f"{r['pool']:>11,} {label:<32} {r['wall_s']:>7.1f} {t.get('score', 0):>7.1f} "
        f"{t.get('score.selection', 0):>6.2f} {t.get('record', 0) + t.get('export', 0):>6.2f} "
        f"{r['eligible']:>11,} {r['posts_per_s']:>9,.0f} {r['peak_rss_mb']:>8,.0f} "
        f"{r['load_before']:>4.1f}/{r['load_after']:<4.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.run is not None:
        run_one(args.run)
        return 0
    args.home.mkdir(parents=True, exist_ok=True)
    if not (args.home / "models" / "CURRENT").exists():
        ensure_home(args.home, args.dtype)
    # Nights from today on: retention (pool_days=14) is relative to the night, so a night far
    # from the pool's arrival days would expire the whole pool.
    # A night that already has a query would only report it: continue after earlier runs.
    done = [date.fromisoformat(p.stem[4:14]) for p in args.home.glob("run-*.out.json")]
    results, night = [], max([datetime.now(UTC).date() - timedelta(days=1), *done])
    base = {"home": str(args.home), "mc_samples": args.mc_samples, "threads": args.threads,
            "chunk_rows": args.chunk_rows, "dtype": args.dtype}  # fmt: skip
    for size in [int(s) for s in args.sizes.split(",")]:
        grow_pool(args.home, size, args.dtype)
        plans = [dict(base, config=c, runner="local", workers=1) for c in args.configs.split(",")]
        if size == args.ray_at:
            plans += [
                dict(base, config=args.ray_config, runner="ray", workers=w, threads=1)
                for w in (1, 2)
            ]
        for spec in plans:
            night += timedelta(days=1)
            r = launch(args, dict(spec, night=night.isoformat(), pool=size))
            results.append(r)
            print(row(r), flush=True)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "noise": NOISE}
    args.out.write_text(json.dumps({"meta": meta, "runs": results}, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


def print_table(results: list[dict]) -> None:
    print(
        f"\n{'pool':>11} {'config [engine×workers]':<32} {'wall s':>7} {'score':>7} "
        f"{'select':>6} {'rec+ex':>6} {'scored':>11} {'posts/s':>9} {'RSS MB':>8} load"
    )
    for r in results:
        print(row(r))
    ray = {r["workers"]: r for r in results if r["runner"] == "ray"}
    if 1 in ray and 2 in ray:
        ratio = ray[1]["timings"]["score"] / ray[2]["timings"]["score"]
        print(f"ray local mode, scoring 2 workers vs 1: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
