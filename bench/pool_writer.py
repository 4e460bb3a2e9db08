"""CPU the server's pool writer spends per Classify call: `write_group` (pool append with its
fdatasyncs, then the ledger transaction) on a real SQLite file and pool folder.

Cells: posts per call (1, 64) × posts new to the ledger or already known (a post classified
again: only its prediction is updated), with `calls` calls per durable group, as the 20 ms
pool linger gathers them under load. Views are 384 + 384 float32 with 13% of images missing
(as in reviews.npz). CPU is the process's (user + system: fdatasync's kernel time counts).

    .venv/bin/python -m bench.pool_writer [--rounds 5] [--groups 30] [--calls 7]

Prints a table (medians over rounds) and writes bench/results/pool_writer.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from model.data import Views
from server.poolwriter import PoolBatch, write_group
from store.ledger import Ledger
from store.pool import Pool

DIM = 384


def _call(rng: np.random.Generator, tag: str, n: int) -> PoolBatch:
    img = rng.standard_normal((n, DIM), dtype=np.float32)
    img[rng.random(n) < 0.13] = np.nan
    txt = rng.standard_normal((n, DIM), dtype=np.float32)
    ids = np.asarray([f"{tag}-{i}" for i in range(n)], dtype=object)
    return PoolBatch(ids, Views.from_nan_rows(img, txt), ["Dresses"] * n, "v0001", "classify")


def cpu_per_call(root: Path, posts: int, groups: int, calls: int, seed: int) -> dict[str, float]:
    """µs of CPU per call writing `groups` groups of fresh posts, then the same posts again."""
    rng = np.random.default_rng(seed)
    work = [[_call(rng, f"r{seed}-g{g}-c{c}", posts) for c in range(calls)] for g in range(groups)]
    pool, ledger = Pool(root / "pool"), Ledger(root / "ledger.sqlite")
    out = {}
    try:
        for cell in ("fresh", "known"):
            t0 = time.process_time()
            for group in work:
                write_group(pool, ledger, group)
            out[cell] = 1e6 * (time.process_time() - t0) / (groups * calls)
    finally:
        pool.close()
        ledger.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--groups", type=int, default=30, help="durable groups per cell")
    p.add_argument("--calls", type=int, default=7, help="calls per group")
    p.add_argument("--out", type=Path, default=Path("bench/results/pool_writer.json"))
    args = p.parse_args()
    runs: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for posts in (1, 64):
            with tempfile.TemporaryDirectory() as tmp:
                got = cpu_per_call(Path(tmp), posts, args.groups, args.calls, seed=r)
            for cell, us in got.items():
                runs.setdefault(f"{posts} post(s), {cell}", []).append(us)
    table = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\n{args.calls} calls per durable group, {args.groups} groups, medians of {args.rounds}")
    print("| call | CPU µs per call | per post |\n|---|---|---|")
    for k, us in table.items():
        posts = int(k.split()[0])
        print(f"| {k} | {us:,.0f} | {us / posts:,.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs,
                                    "median_us_per_call": table}, indent=2))  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
