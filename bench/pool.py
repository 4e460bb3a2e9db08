"""Pool write and chunked read time for 1M posts × (384 + 384), float32 or float16.

Run: .venv/bin/python -m bench.pool [--rows 1000000] [--segment-rows 65536] [--dtype float32]
Prints a table and writes bench/results/pool.json. Needs ~3 GB disk at 1M (float32); memory
stays at one chunk. Each append is durable (fsync) when it returns.
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
        ids = [f"post-{i}" for i in range(start, start + n)]
        pool.append(ids, Views.from_nan_rows(img, txt))
    pool.close()
    return time.perf_counter() - t0


def timed_read(root: Path, chunk_rows: int) -> tuple[float, float, int]:
    """Seconds to open + list segments, seconds to load every chunk (as the nightly does)."""
    t0 = time.perf_counter()
    pool = Pool(root)
    refs = pool.chunks(pool.segments(), chunk_rows)
    t1 = time.perf_counter()
    n = sum(len(pool.load(r).views) for r in refs)
    return t1 - t0, time.perf_counter() - t1, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--segment-rows", type=int, default=65_536)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--chunk-rows", type=int, default=16_384)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        pool = Pool(root, args.dtype, segment_rows=args.segment_rows)
        write_s = fill(pool, args.rows, args.segment_rows, args.dim, rng)
        for attempt in range(3):
            open_s, read_s, n = timed_read(root, args.chunk_rows)
            results.append({"attempt": attempt, "open_s": open_s, "read_s": read_s, "rows": n})
    gb = args.rows * args.dim * 2 * np.dtype(args.dtype).itemsize / 1e9
    print(f"wrote {args.rows} rows × ({args.dim}+{args.dim}) ({gb:.2f} GB) in {write_s:.1f} s")
    print(f"{'attempt':>7} {'open s':>8} {'read s':>8} {'GB/s':>6}")
    for r in results:
        print(f"{r['attempt']:>7} {r['open_s']:>8.2f} {r['read_s']:>8.2f} {gb / r['read_s']:>6.2f}")
    out = Path(__file__).parent / "results" / "pool.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "dim": args.dim,
                "dtype": args.dtype,
                "write_s": write_s,
                "reads": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
