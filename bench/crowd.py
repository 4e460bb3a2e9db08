"""What overlap and aggregation buy: the simulation with simulated assessors, Dawid-Skene vs
majority vote vs one perfect assessor, same seeds, same initial rows, same queries' strategy.

Run: nice -n 10 .venv/bin/python -m bench.crowd --dataset reviews --seeds 3 --threads 1
Prints a table (final test accuracy and label accuracy, mean ± std over seeds) and writes
bench/results/crowd.json. The full-data reference of `batch_jobs.simulate` is skipped (it is
the same for every arm and costs a passive run on the whole pool per seed).

Every arm replays the loop of `batch_jobs.simulate` (`initial_model` + `run_strategy`); the
crowd arms label every asked row (the initial set too) with `--overlap` answers from the team
`--assessors` (wrong answers favour similar classes, see batch_jobs/assessors.py) and train on
the aggregated labels; the perfect arm trains on the true labels (one answer per row).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from batch_jobs.assessors import make_oracle
from batch_jobs.datasets import DEFAULT_DATA_DIR, load_dataset
from batch_jobs.simulate import SimConfig, StrategySpec, initial_model, make_split, run_strategy

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("ds", "mv", "perfect")


def run_arm(arm: str, args: argparse.Namespace, ds, seed: int) -> dict:
    spec = StrategySpec.parse(args.strategy)
    crowd = arm != "perfect"
    cfg = SimConfig(
        dataset=args.dataset,
        strategies=(spec,),
        initial=args.initial,
        query_size=args.query_size,
        steps=args.steps,
        seeds=args.seeds,
        assessors=args.assessors if crowd else (),
        overlap=args.overlap if crowd else 1,
        aggregate=arm if crowd else "ds",
    )
    t0 = time.perf_counter()
    split = make_split(ds, cfg, seed)
    oracle = make_oracle(
        cfg.assessors, cfg.overlap, cfg.aggregate, split.pool, len(split.classes), seed
    )
    start = initial_model(split, cfg, seed, oracle)
    curve = run_strategy(spec, split, start, cfg, seed, None, oracle)
    return {
        "arm": arm,
        "seed": seed,
        "labeled_rows": curve.labels[-1],
        "answers": curve.labels[-1] * cfg.overlap,
        "accuracy": curve.accuracy[-1],
        "label_accuracy": curve.label_accuracy[-1] if curve.label_accuracy else 1.0,
        "accuracy_curve": curve.accuracy,
        "label_accuracy_curve": curve.label_accuracy,
        "seconds": time.perf_counter() - t0,
    }


def summarise(runs: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        acc = np.array([r["accuracy"] for r in mine])
        lab = np.array([r["label_accuracy"] for r in mine])
        out[arm] = {
            "seeds": len(mine),
            "accuracy_mean": float(acc.mean()),
            "accuracy_std": float(acc.std()),
            "label_accuracy_mean": float(lab.mean()),
            "label_accuracy_std": float(lab.std()),
            "labeled_rows": mine[0]["labeled_rows"],
            "answers": mine[0]["answers"],
        }
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| arm | rows labeled | answers | final test acc % | label acc % |",
        "|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(
            f"| {arm} | {s['labeled_rows']} | {s['answers']} | "
            f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f} | "
            f"{100 * s['label_accuracy_mean']:.2f} ± {100 * s['label_accuracy_std']:.2f} |"
        )
    if "ds" in summary and "mv" in summary:
        gain = summary["ds"]["accuracy_mean"] - summary["mv"]["accuracy_mean"]
        lgain = summary["ds"]["label_accuracy_mean"] - summary["mv"]["label_accuracy_mean"]
        lines.append(f"DS - MV: test accuracy {100 * gain:+.2f} pt, label accuracy "
                     f"{100 * lgain:+.2f} pt")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.crowd", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="reviews")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--assessors", default="0.9,0.75,0.6")
    p.add_argument("--overlap", type=int, default=3)
    p.add_argument("--strategy", default="margin")
    p.add_argument("--initial", type=int, default=500)
    p.add_argument("--query-size", type=int, default=50)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … +seeds-1")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "crowd.json")
    args = p.parse_args(argv)
    args.assessors = tuple(float(a) for a in args.assessors.split(","))
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, args.data_dir)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arm in args.arms.split(","):
            runs.append(run_arm(arm, args, ds, seed))
            r = runs[-1]
            print(f"seed {seed} {arm}: test acc {r['accuracy']:.4f} label acc "
                  f"{r['label_accuracy']:.4f} ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out),
                "data_dir": str(args.data_dir)}, "runs": runs, "summary": summarise(runs)},
                indent=1))  # fmt: skip
    print(table(summarise(runs)))


if __name__ == "__main__":
    main()
