"""Does float16 pool storage change the chosen query? Same rows, same model, same seed.

Run: .venv/bin/python -m bench.pool_dtype [--rows 200000] [--model-home /tmp/postclf-scale]

Writes the same synthetic rows (reviews rows tiled with N(0, 0.01²) noise, as
bench.nightly_scale) into a float32 and a float16 pool, scores both with the registry's current
model and the same seed, and prints how many of the q chosen posts agree, per configuration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from batch_jobs.active_step import propose
from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.datasets import read_arrays
from batch_jobs.scoring import PoolSource
from bench.nightly_scale import DATA, NOISE
from model.data import Views
from model.registry import ModelRegistry
from store.pool import Pool

CONFIGS = {
    "margin": QueryConfig("margin", 100, diversity=None, balance=False),
    "margin+kmeans+balance": QueryConfig("margin", 100, diversity="kmeans", balance=True),
    "bald": QueryConfig("bald", 100, diversity=None, balance=False),
}


def fill(root: Path, dtype: str, rows: int) -> Pool:
    pool = Pool(root, dtype)
    d = read_arrays(Path(DATA))
    image, text = d["image"].astype(np.float32), d["text"].astype(np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 1 << 16):
        n = min(1 << 16, rows - start)
        src = rng.integers(0, image.shape[0], n)
        arrays = []
        for x in (image, text):
            y = x[src] + NOISE * rng.standard_normal((n, x.shape[1]), dtype=np.float32)
            arrays.append(y / np.linalg.norm(y, axis=1, keepdims=True))
        pool.append([f"syn-{i}" for i in range(start, start + n)], Views.from_nan_rows(*arrays))
    return pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--model-home", type=Path, default=Path("/tmp/postclf-scale"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/pool_dtype.json"))
    args = ap.parse_args()
    clf = ModelRegistry(args.model_home / "models").load()
    tmp = Path(tempfile.mkdtemp())
    results = {}
    try:
        chosen: dict[str, dict[str, set[str]]] = {}
        for dtype in ("float32", "float16"):
            pool = fill(tmp / dtype, dtype, args.rows)
            segs = pool.segments()
            source = PoolSource(tmp / dtype, [s.path for s in segs], pool.chunks(segs, 16_384),
                                np.zeros(0, np.uint64))  # fmt: skip
            for name, cfg in CONFIGS.items():
                got = propose(clf, None, source, cfg, EngineConfig(), (0, 1))
                ids = {
                    pool.ids(source.segments[p], np.array([r]))[0]
                    for p, r in zip(got.parts.tolist(), got.indices.tolist(), strict=True)
                }
                chosen.setdefault(name, {})[dtype] = ids
        print(f"{'config':<24} {'same posts in the query (of 100)':>34}")
        for name, by in chosen.items():
            same = len(by["float32"] & by["float16"])
            results[name] = same
            print(f"{name:<24} {same:>34}")
    finally:
        shutil.rmtree(tmp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "q": 100, "same": results}, indent=2))


if __name__ == "__main__":
    main()
