"""Pool read time for 1M posts × (384 + 384) float32, cold-ish (fresh Pool) and warm.

Run: .venv/bin/python -m bench.pool [--rows 1000000] [--segment-rows 65536] [--dir DIR]
Prints a table and writes bench/results/pool.json. Needs ~3 GB disk and ~7 GB memory at 1M.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from model.data import Views
from store.pool import Pool


def fill(pool: Pool, rows: int, seg_rows: int, dim: int, rng: np.random.Generator) -> float:
    t0 = time.perf_counter()
    for start in range(0, rows, seg_rows):
        n = min(seg_rows, rows - start)
        img = rng.standard_normal((n, dim), dtype=np.float32)
        img[rng.random(n) < 0.13] = np.nan  # titles missing as in reviews.npz
        txt = rng.standard_normal((n, dim), dtype=np.float32)
        ids = np.char.add("post-", np.arange(start, start + n).astype(str))
        pool.append(ids, Views.from_nan_rows(img, txt))
    pool.flush()
    return time.perf_counter() - t0


def timed_read(root: Path) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    pool = Pool(root)  # opening loads every segment's ids
    t1 = time.perf_counter()
    ids, views = pool.read()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(ids) + 0 * len(views)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--segment-rows", type=int, default=65_536)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        write_s = fill(
            Pool(root, flush_rows=args.segment_rows), args.rows, args.segment_rows, args.dim, rng
        )
        for attempt in range(3):
            open_s, read_s, n = timed_read(root)
            results.append({"attempt": attempt, "open_s": open_s, "read_s": read_s, "rows": n})
    gb = args.rows * args.dim * 2 * 4 / 1e9
    print(f"wrote {args.rows} rows × ({args.dim}+{args.dim}) ({gb:.2f} GB) in {write_s:.1f} s")
    print(f"{'attempt':>7} {'open s':>8} {'read s':>8} {'GB/s':>6}")
    for r in results:
        print(f"{r['attempt']:>7} {r['open_s']:>8.2f} {r['read_s']:>8.2f} {gb / r['read_s']:>6.2f}")
    out = Path(__file__).parent / "results" / "pool.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"rows": args.rows, "dim": args.dim, "write_s": write_s, "reads": results}, indent=2
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
