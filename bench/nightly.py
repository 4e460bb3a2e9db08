"""Nightly acquisition cost: scoring throughput, selection stages, propose_query, 10M projection.

Run: .venv/bin/python -m bench.nightly [--pool 200000] [--out bench/results/nightly.json]

Trains a trident on the reviews train split (TrainConfig defaults), then builds a pool of
`--pool` posts by **resampling the real embeddings**: the reviews rows are tiled and each copy
gets a little Gaussian noise and is L2-renormalised (missing views stay missing). Timings are
medians of `--repeats` runs; BALD runs on a `--bald-rows` subsample (it is ~T× the work). The
10M projection is a linear extrapolation of the measured throughput, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

from acquisition.scores import STRATEGIES
from acquisition.selection import select_query
from batch_jobs.active_step import QueryConfig, propose_query
from batch_jobs.datasets import DEFAULT_DATA_DIR, read_arrays
from model.classifier import Classifier
from model.data import Views
from model.training import LabeledViews, TrainConfig, train_passive

DATA = DEFAULT_DATA_DIR / "reviews.npz"
PROJECT_TO = 10_000_000


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def train_model(npz: dict[str, np.ndarray], max_epochs: int | None) -> tuple[Classifier, float]:
    views = Views.from_nan_rows(npz["image"], npz["text"])
    labels = npz["label"].astype(np.int64)
    split = npz["split"]
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    classes = [str(c) for c in npz["class_names"]]
    t0 = time.perf_counter()
    clf = train_passive(
        LabeledViews(views.take(tr), labels[tr]),
        LabeledViews(views.take(va), labels[va]),
        classes,
        TrainConfig() if max_epochs is None else TrainConfig(max_epochs=max_epochs),
    )
    return clf, time.perf_counter() - t0


def resample_pool(npz: dict[str, np.ndarray], n: int, noise: float, seed: int) -> Views:
    """`n` posts: reviews rows tiled, plus N(0, noise²) per element, renormalised to unit L2."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, npz["image"].shape[0], n)  # (n,) resampled row ids
    arrays = []
    for name in ("image", "text"):
        x = npz[name][src].astype(np.float32)  # (n, 384), NaN rows = missing
        x += rng.normal(0.0, noise, x.shape).astype(np.float32)  # NaN stays NaN
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        arrays.append(x)
    return Views.from_nan_rows(*arrays)


def scoring(clf: Classifier, pool: Views, args: argparse.Namespace) -> dict[str, float]:
    """Margin over the whole pool (forward pass included) and BALD T over a subsample."""
    n, rng = len(pool), np.random.default_rng(1)
    margin_s = median_time(
        lambda: STRATEGIES["margin"].score(clf.predict(pool).probs, rng), args.repeats
    )
    sub = pool.take(np.arange(min(args.bald_rows, n)))
    bald_s = median_time(
        lambda: STRATEGIES["bald"].score(clf.predict_mc(sub, args.mc_samples, rng), rng),
        args.repeats,
    )
    margin_rate, bald_rate = n / margin_s, len(sub) / bald_s
    return {
        "margin_rows": n,
        "margin_s": margin_s,
        "margin_posts_per_s": margin_rate,
        "bald_rows": len(sub),
        "bald_T": args.mc_samples,
        "bald_s": bald_s,
        "bald_posts_per_s": bald_rate,
        "bald_cost_vs_margin": margin_rate / bald_rate,
    }


def selection(clf: Classifier, pool: Views, args: argparse.Namespace) -> dict[str, float]:
    """Each selection stage alone on the margin scores of the whole pool, q small and large."""
    pred = clf.predict(pool, with_features=True)
    scores = STRATEGIES["margin"].score(pred.probs, np.random.default_rng(0))
    predicted, n_classes = pred.probs.argmax(1), pred.probs.shape[1]
    out: dict[str, float] = {"feature_dim": float(pred.features.shape[1])}
    for q in (20, 1000):
        for label, kw in (
            ("top_k", {}),
            ("kmeans", {"diversity": "kmeans"}),
            ("kcenter", {"diversity": "kcenter"}),
            ("balance", {"balance": True}),
            ("kmeans+balance", {"diversity": "kmeans", "balance": True}),
        ):
            out[f"{label}_q{q}_s"] = median_time(
                lambda q=q, kw=kw: select_query(
                    scores, pred.features, predicted, q, np.random.default_rng(2),
                    candidate_factor=args.candidate_factor, n_classes=n_classes, **kw,
                ),
                args.repeats,
            )  # fmt: skip
    return out


def nightly(clf: Classifier, pool: Views, args: argparse.Namespace) -> dict[str, float]:
    """`propose_query` as the nightly job runs it: margin, k-means diversity, balance, q=20."""
    cfg = QueryConfig(
        strategy="margin", query_size=20, candidate_factor=args.candidate_factor,
        diversity="kmeans", balance=True,
    )  # fmt: skip
    eligible = np.ones(len(pool), bool)
    walls, parts = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        q = propose_query(clf, pool, eligible, cfg, np.random.default_rng(r))
        walls.append(time.perf_counter() - t0)
        parts.append(q.timings)
    return {
        "propose_query_s": float(np.median(walls)),
        "propose_scoring_s": float(np.median([p["scoring"] for p in parts])),
        "propose_selection_s": float(np.median([p["selection"] for p in parts])),
    }


def project(res: dict[str, float], n: int) -> dict[str, object]:
    """Linear extrapolation to 10M pooled posts: scoring and the O(n) top-k pass scale with n;
    the clustering/balance of a fixed `candidate_factor·q` candidate set does not."""
    f = PROJECT_TO / n
    top_k = res["top_k_q20_s"]
    selection_s = top_k * f + max(res["propose_selection_s"] - top_k, 0.0)
    return {
        "projected_rows": PROJECT_TO,
        "method": "linear extrapolation of the measured times above (not measured)",
        "margin_scoring_s": PROJECT_TO / res["margin_posts_per_s"],
        "bald_scoring_s": PROJECT_TO / res["bald_posts_per_s"],
        "propose_query_s": res["propose_scoring_s"] * f + selection_s,
    }


def environment() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }


def table(res: dict[str, float], proj: dict[str, object]) -> str:
    n = int(res["margin_rows"])
    rows = [
        ("margin scoring (forward + score)", f"{res['margin_posts_per_s']:,.0f} posts/s", n),
        (f"BALD T={res['bald_T']} scoring", f"{res['bald_posts_per_s']:,.0f} posts/s",
         int(res["bald_rows"])),
        ("BALD cost relative to margin", f"{res['bald_cost_vs_margin']:.1f}x", ""),
    ]  # fmt: skip
    for key, val in res.items():
        if key.endswith("_s") and ("_q20_" in key or "_q1000_" in key):
            rows.append((f"select {key[:-2]}", f"{val * 1e3:,.1f} ms", n))
    rows += [
        ("propose_query margin+kmeans+balance q=20", f"{res['propose_query_s']:.2f} s", n),
        ("  of which scoring / selection",
         f"{res['propose_scoring_s']:.2f} / {res['propose_selection_s']:.2f} s", n),
        ("projection 10M: margin scoring", f"{proj['margin_scoring_s']:,.0f} s", "extrapolated"),
        ("projection 10M: BALD scoring", f"{proj['bald_scoring_s']:,.0f} s", "extrapolated"),
        ("projection 10M: propose_query", f"{proj['propose_query_s']:,.0f} s", "extrapolated"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'value':>22}  rows", "-" * (width + 36)]
    lines += [f"{a:<{width}}  {b:>22}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pool", type=int, default=200_000, help="pooled posts (resampled)")
    ap.add_argument("--noise", type=float, default=0.005, help="per-element noise std")
    ap.add_argument("--bald-rows", type=int, default=10_000)
    ap.add_argument("--mc-samples", type=int, default=20)
    ap.add_argument("--candidate-factor", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=None, help="smoke runs only")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("bench/results/nightly.json"))
    args = ap.parse_args()
    env = environment()
    t_start = time.perf_counter()
    npz = read_arrays(Path(args.data))
    clf, train_s = train_model(npz, args.max_epochs)
    pool = resample_pool(npz, args.pool, args.noise, seed=0)
    res: dict[str, float] = {}
    res |= scoring(clf, pool, args)
    res |= selection(clf, pool, args)
    res |= nightly(clf, pool, args)
    proj = project(res, len(pool))
    env["loadavg_end"] = os.getloadavg()
    report = {
        "command": "python -m bench.nightly "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "data"),
        "pool": f"{len(pool)} posts resampled from {args.data.name} ({npz['image'].shape[0]} "
        f"real rows): tiled, + N(0, {args.noise}^2) noise per element, L2-renormalised",
        "train_s": train_s,
        "repeats": args.repeats,
        "results": res,
        "projection": proj,
        "environment": env,
        "total_wall_s": time.perf_counter() - t_start,
    }
    print(report["pool"])
    print(f"trained in {train_s:.1f} s; medians of {args.repeats} runs; env {env}")
    print(table(res, proj))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
