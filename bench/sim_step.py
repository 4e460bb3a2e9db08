"""Seconds per simulation query step at a large pool, policy by policy (training excluded).

Run: .venv/bin/python -m bench.sim_step [--pool 100000] [--repeats 3]
     [--out bench/results/sim_step.json]

Trains a trident on 500 random reviews train rows (a short passive phase), builds a pool of
`--pool` posts by tiling the real reviews embeddings with a little Gaussian noise
(`bench.nightly.resample_pool`), marks `--labeled` rows labeled, and times one
`policy.propose_in_memory` call (the simulator's query step: scoring the unlabeled pool and
selection) per policy, with the bf16 prefilter (`EngineConfig.prefilter`, "auto": on where
bf16 is fast) and without it ("off", float32 alone), alternating, so the ratio is measured in
one run; it also counts how many of the prefiltered query's rows equal the float32 query's.
Medians of `--repeats`, one torch thread; wall and CPU seconds of this process, with the load
average, because on a shared box wall time mostly measures the other tenants (CPU seconds are
what one free core would take). Training time per step is a separate
matter (it depends on the labeled count, not the pool): see the simulator's `s/step` column.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.datasets import read_arrays
from batch_jobs.policy import propose_in_memory
from bench.nightly import DATA, resample_pool
from model.data import Views
from model.folded import bf16_is_fast
from model.threads import set_threads
from model.training import LabeledViews, TrainConfig, train_passive

# The policies as named: no cold start and no control share unless the name says so.
WARM = QueryConfig("margin", 100, cold_start_labels=0, random_share=0.0)
POLICIES = {
    "margin": replace(WARM, diversity=None, balance=False),
    "margin+kmeans+balance": replace(WARM, diversity="kmeans", balance=True),
    "margin+power+kmeans+balance": replace(
        WARM, diversity="kmeans", balance=True, sampling="power"
    ),
    "margin_committee+kmeans+balance": replace(
        WARM, strategy="margin_committee", diversity="kmeans", balance=True
    ),
    "margin+kmeans+balance+control": replace(
        WARM, diversity="kmeans", balance=True, random_share=QueryConfig().random_share
    ),
}
PREFILTERS = ("auto", "off")
COLD = ("typical-cold-start@500-labeled", replace(WARM, cold_start_labels=10**9))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", type=int, default=100_000)
    p.add_argument("--labeled", type=int, default=4500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/sim_step.json"))
    p.add_argument("--only", help="comma list of policy names to time (default: all)")
    args = p.parse_args()
    set_threads(1)
    npz = read_arrays(Path(DATA))
    tr = np.flatnonzero(npz["split"] == "train")
    rows = np.random.default_rng(0).choice(tr, 500, replace=False)
    views = Views.from_nan_rows(npz["image"], npz["text"])
    labels = npz["label"].astype(np.int64)
    classes = [str(c) for c in npz["class_names"]]
    clf = train_passive(
        LabeledViews(views.take(rows), labels[rows]), None, classes, TrainConfig(max_epochs=10)
    )
    pool = resample_pool(npz, args.pool, 0.02, seed=1)
    labeled = np.zeros(args.pool, bool)
    labeled[np.random.default_rng(2).choice(args.pool, args.labeled, replace=False)] = True
    few = np.zeros(args.pool, bool)
    few[np.flatnonzero(labeled)[:500]] = True  # the cold start runs while labels are few
    results = {}
    todo = [*POLICIES.items(), COLD]
    if args.only:
        todo = [(n, c) for n, c in todo if n in args.only.split(",")]
    for name, cfg in todo:
        mask = few if cfg.cold_start_labels else labeled
        runs: dict[str, dict[str, list]] = {
            pf: {"s": [], "cpu": [], "rows": []} for pf in PREFILTERS
        }
        for r in range(args.repeats):
            for pf in PREFILTERS:  # alternating: both see the same load
                t0, c0 = time.perf_counter(), time.process_time()
                q = propose_in_memory(
                    clf,
                    pool,
                    mask,
                    cfg,
                    np.random.default_rng(r),
                    engine=EngineConfig(prefilter=pf),
                )
                runs[pf]["s"].append(time.perf_counter() - t0)
                runs[pf]["cpu"].append(time.process_time() - c0)
                runs[pf]["rows"].append(set(zip(q.parts.tolist(), q.indices.tolist(), strict=True)))
        same = [len(a & b) for a, b in zip(runs["auto"]["rows"], runs["off"]["rows"], strict=True)]
        results[name] = {
            pf: {
                "median_s": float(np.median(v["s"])),
                "median_cpu_s": float(np.median(v["cpu"])),
                "all_s": v["s"],
                "all_cpu_s": v["cpu"],
            }
            for pf, v in runs.items()
        } | {"same_rows": same, "query_rows": cfg.query_size}
    load = os.getloadavg()
    print(f"pool {args.pool}, labeled {args.labeled}, q=100, 1 thread, load avg {load[0]:.1f}, "
          f"bf16 fast here: {bf16_is_fast()}")  # fmt: skip
    print("| policy | CPU s/step, prefilter auto | CPU s/step, float32 | ratio "
          "| wall s (auto / float32) | same rows |\n|---|---|---|---|---|---|")  # fmt: skip
    for name, r in results.items():
        a, f = r["auto"], r["off"]
        same = f"{min(r['same_rows'])}/{r['query_rows']}"
        print(
            f"| {name} | {a['median_cpu_s']:.2f} | {f['median_cpu_s']:.2f} | "
            f"{a['median_cpu_s'] / f['median_cpu_s']:.2f} | "
            f"{a['median_s']:.2f} / {f['median_s']:.2f} | {same} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args) | {"out": str(args.out)}, "load": load, "bf16_fast": bf16_is_fast()}
    args.out.write_text(json.dumps(meta | {"results": results}, indent=1))


if __name__ == "__main__":
    main()
