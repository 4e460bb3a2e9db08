"""Ledger label writes: synchronous=NORMAL vs FULL, one label per call and one query (20) per call.

Run: .venv/bin/python -m bench.ledger [--labels 2000] [--dir DIR]
Prints a table and writes bench/results/ledger.json. A realistic rate: a team of assessors
answers a 20-post query in minutes, i.e. a few labels per second at peak; what matters is the
per-call latency and whether the durable setting is affordable at that rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from store.ledger import LabelRow, Ledger


def run(mode: str, per_call: int, n_labels: int, root: Path) -> dict[str, float]:
    path = root / f"ledger-{mode}-{per_call}.db"
    led = Ledger(path, synchronous=mode)
    ids = [f"p{i}" for i in range(n_labels)]
    led.add_posts(ids, "classify")
    lat = []
    t0 = time.perf_counter()
    for start in range(0, n_labels, per_call):
        batch = [LabelRow(p, "ann", "Dresses") for p in ids[start : start + per_call]]
        t = time.perf_counter()
        led.add_labels(batch)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    led.close()
    lat_ms = np.asarray(lat) * 1e3
    return {
        "synchronous": mode,
        "labels_per_call": per_call,
        "labels": n_labels,
        "labels_per_s": n_labels / total,
        "call_p50_ms": float(np.percentile(lat_ms, 50)),
        "call_p99_ms": float(np.percentile(lat_ms, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--labels", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None, help="where the test files go (a real disk)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [
            run(mode, per_call, args.labels, Path(tmp))
            for per_call in (1, 20)
            for mode in ("NORMAL", "FULL")
        ]
    print(f"{'sync':8} {'per call':>8} {'labels/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(
            f"{r['synchronous']:8} {r['labels_per_call']:>8} {r['labels_per_s']:>10.0f} "
            f"{r['call_p50_ms']:>8.3f} {r['call_p99_ms']:>8.3f}"
        )
    out = Path(__file__).parent / "results" / "ledger.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
