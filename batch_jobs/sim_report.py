"""Simulation results: per-strategy summaries, results.json, curves.png and the printed tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs.stopping import gain_per_1k, stop_suggested

TARGETS = (0.95, 0.98)  # fractions of the full-data accuracy
TIME_PARTS = ("training", "scoring", "selection", "evaluation")
# The published MNIST experiment (see ../shared/data/README.md), accuracy in %.
PUBLISHED_MNIST = {
    "full": 92.25,
    "random": 83.75,
    "least_confidence": 89.75,
    "least_confidence+self-labelling": 90.50,
}


def _mean_std(runs: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per evaluated step across seeds; curves are cut to the shortest seed. → `(k,)`, `(k,)`."""
    k = min(len(r) for r in runs)
    arr = np.array([r[:k] for r in runs], dtype=np.float64)  # (seeds, k)
    return arr.mean(0), arr.std(0)


def labels_to_reach(labels: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    """First label count where the mean curve reaches `target`; None if it never does."""
    hit = np.flatnonzero(curve >= target)
    return int(labels[hit[0]]) if len(hit) else None


def monotone(curve: np.ndarray) -> np.ndarray:
    """The least-squares non-decreasing fit of `curve (k,)` (pool-adjacent-violators).

    A learning curve rises with labels in expectation; what falls between steps is evaluation
    and training noise. The first crossing of a raw noisy curve is biased early (one lucky step
    counts), and random's last point is one noisy sample: crossings of the fits are the
    steadier reading of "labels to reach"."""
    blocks: list[list[float]] = []  # [sum, count] of merged adjacent values
    for v in np.asarray(curve, np.float64).tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return np.concatenate([np.full(int(c), t / c) for t, c in blocks])


def auc(labels: np.ndarray, curve: np.ndarray) -> float:
    """Area under the accuracy curve divided by its label range: mean accuracy over the budget."""
    if len(labels) < 2:
        return float(curve[0])
    area = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(labels)))
    return area / float(labels[-1] - labels[0])


def _strategy_summary(runs: list[dict], full_acc: float) -> dict[str, Any]:
    labels = np.array(runs[0]["labels"][: min(len(r["labels"]) for r in runs)])
    out: dict[str, Any] = {"labels": labels.tolist()}
    for metric in ("accuracy", "macro_f1", "rare_f1"):
        mean, std = _mean_std([r[metric] for r in runs])
        out[metric] = {"mean": mean.tolist(), "std": std.tolist()}
    acc = np.array(out["accuracy"]["mean"])
    final = [r["accuracy"][len(labels) - 1] for r in runs]
    out["final"] = {
        "labels": int(labels[-1]),
        "accuracy_mean": float(np.mean(final)),
        "accuracy_std": float(np.std(final)),
        "macro_f1_mean": out["macro_f1"]["mean"][-1],
        "rare_f1_mean": out["rare_f1"]["mean"][-1],
        "rare_f1_std": out["rare_f1"]["std"][-1],
    }
    out["auc"] = auc(labels, acc)
    out["labels_to"] = {f"{t:.2f}": labels_to_reach(labels, acc, t * full_acc) for t in TARGETS}
    out["seconds_per_step"] = {
        part: float(np.mean(np.concatenate([r["seconds"].get(part, []) for r in runs])))
        for part in TIME_PARTS
        if any(r["seconds"].get(part) for r in runs)
    }
    out["seeds"] = len(runs)
    stab = [r.get("stability") or [] for r in runs]
    if all(stab):
        mean_stab, _ = _mean_std(stab)
        out["stability"] = mean_stab.tolist()  # per step, predictions unchanged (label-free)
        at = stop_suggested(out["stability"])
        out["stop_suggested_labels"] = (
            int(labels[min(at + 1, len(labels) - 1)]) if at is not None else None
        )
    out["gain_per_1k_final"] = gain_per_1k(labels, acc)
    pseudo = [p for r in runs for p in r.get("pseudo") or []]
    if pseudo:
        prec = [p["precision"] for p in pseudo if p.get("precision") is not None]
        out["pseudo_labels"] = {
            "per_step_mean": float(np.mean([p["pseudo_labels"] for p in pseudo])),
            "precision_mean": float(np.mean(prec)) if prec else None,
            "threshold_mean": float(
                np.mean([p["threshold"] for p in pseudo if p["threshold"]] or [np.nan])
            ),
        }
    selfl = [r["self_labelled"] for r in runs if r.get("self_labelled")]
    if selfl:
        out["self_labelled"] = {
            f"{k}_{agg}": float(fn([x[k] for x in selfl]))
            for k in ("accuracy", "macro_f1", "pseudo_labels", "pseudo_correct")
            for agg, fn in (("mean", np.mean), ("std", np.std))
        } | {"threshold": selfl[0]["threshold"]}
    out["per_seed"] = runs
    return out


def _saving(mine: int | None, rand: int | None, rand_max: int) -> str:
    """Labels (and %) saved against random to reach the same target."""
    if mine is None:
        return "—"
    if rand is None:
        return f">{rand_max - mine} (random never)"
    return f"{rand - mine} ({100 * (rand - mine) / rand:.0f}%)"


def summarise(raw: dict, seconds: float | None) -> dict[str, Any]:
    """The results.json document: config, full-data reference, per-strategy curves and summaries.

    `raw` is what `simulate` returns (also its checkpoint file raw.json); strategies or seeds
    not run yet are left out.
    """
    full = raw["full"]
    full_acc = float(np.mean([f["accuracy"] for f in full]))
    strategies = {
        name: _strategy_summary(runs, full_acc) for name, runs in raw["curves"].items() if runs
    }
    rand = strategies.get("random")
    if rand is not None:
        rand_final = rand["final"]["accuracy_mean"]
        # The same question asked of the monotone fits of both mean curves (see `monotone`).
        rand_fit = float(monotone(np.array(rand["accuracy"]["mean"]))[-1])
    for s in strategies.values():
        s["labels_to_random_final"] = s["labels_to_random_final_monotone"] = None
        if rand is None:
            continue
        acc, labels = np.array(s["accuracy"]["mean"]), np.array(s["labels"])
        s["labels_to_random_final"] = labels_to_reach(labels, acc, rand_final)
        s["labels_to_random_final_monotone"] = labels_to_reach(labels, monotone(acc), rand_fit)
        s["steps_below_random_band"] = _below_band(s, rand)
        s["vs_random"] = paired_vs_random(s["per_seed"], rand["per_seed"])
    return {
        "config": raw["config"],
        "wall_seconds": seconds,
        "full": {
            "labels": full[0]["labels"],
            **{
                f"{m}_{agg}": float(fn([f[m] for f in full]))
                for m in ("accuracy", "macro_f1", "rare_f1", "seconds")
                for agg, fn in (("mean", np.mean), ("std", np.std))
            },
            "per_seed": full,
        },
        "strategies": strategies,
    }


def paired_vs_random(runs: list[dict], rand_runs: list[dict], resamples: int = 1000) -> dict | None:
    """How sure the comparison with random is, seed by seed (runs pair by position: seed order).

    `auc_gain`: per seed, the strategy's mean accuracy over the budget minus random's (a
    paired difference; its sign is the steadiest reading). `labels_to_random_final_10_90`:
    the 10th and 90th percentiles of the monotone-fit crossing under a paired bootstrap over
    seeds (None above random's budget: not reached in that share of resamples). Needs ≥ 2
    seeds on the same label grid; else None."""
    if len(runs) < 2 or len(runs) != len(rand_runs):
        return None
    k = min(len(r["labels"]) for r in [*runs, *rand_runs])
    labels = np.array(runs[0]["labels"][:k])
    if any(r["labels"][:k] != labels.tolist() for r in rand_runs):
        return None
    mine = np.array([r["accuracy"][:k] for r in runs])  # (seeds, k)
    base = np.array([r["accuracy"][:k] for r in rand_runs])  # (seeds, k)
    gain = [auc(labels, a) - auc(labels, b) for a, b in zip(mine, base, strict=True)]
    rng = np.random.default_rng(0)  # a fixed stream: the same report for the same runs
    never = int(labels[-1]) + 1
    cross = []
    for _ in range(resamples):
        i = rng.integers(0, len(runs), len(runs))
        hit = labels_to_reach(labels, monotone(mine[i].mean(0)), monotone(base[i].mean(0))[-1])
        cross.append(never if hit is None else hit)
    lo, hi = (int(x) for x in np.percentile(cross, [10, 90], method="lower"))
    return {
        "auc_gain": gain,
        "auc_gain_mean": float(np.mean(gain)),
        "seeds_ahead": int(sum(g > 0 for g in gain)),
        "labels_to_random_final_10_90": [None if x == never else x for x in (lo, hi)],
    }


def _below_band(s: dict, rand: dict) -> int:
    """Evaluated steps where the mean accuracy is below random's mean - std at equal labels."""
    k = min(len(s["labels"]), len(rand["labels"]))
    if s["labels"][:k] != rand["labels"][:k]:
        return -1  # different label grids: not comparable step by step
    low = np.array(rand["accuracy"]["mean"][:k]) - np.array(rand["accuracy"]["std"][:k])
    return int((np.array(s["accuracy"]["mean"][:k]) < low - 1e-12).sum())


def compact_table(results: dict) -> str:
    """Strategies sorted by labels needed to reach random's final accuracy (fewest first),
    with the saving against random's budget as a number."""
    strategies, rand = results["strategies"], results["strategies"].get("random")
    budget = rand["final"]["labels"] if rand else None

    def order(item: tuple[str, dict]) -> tuple[float, float]:
        lt = item[1].get("labels_to_random_final")
        return (lt if lt is not None else float("inf"), -item[1]["final"]["accuracy_mean"])

    def saving(lt: int | None) -> str:
        return f"{100 * (budget - lt) / budget:.0f}" if lt is not None and budget else "—"

    cols = ["strategy", "seeds", "to rnd final", "saving %", "monotone fits", "saving %"]
    cols += ["10–90%", "AUC vs rnd (seeds ahead)"]
    cols += ["final acc %", "rare F1 %", "to 95%", "to 98%", "below rnd band", "stop at"]
    cols += ["gain/1k"]
    rows = []
    for name, s in sorted(strategies.items(), key=order):
        lt, f = s.get("labels_to_random_final"), s["final"]
        mono = s.get("labels_to_random_final_monotone")
        gain = s.get("gain_per_1k_final")
        rows.append([
            name, str(s["seeds"]), str(lt) if lt is not None else "never", saving(lt),
            str(mono) if mono is not None else "never", saving(mono), *_paired_cells(s),
            f"{100 * f['accuracy_mean']:.2f} ± {100 * f['accuracy_std']:.2f}",
            f"{100 * f['rare_f1_mean']:.2f}",
            *(str(s["labels_to"][k] or "never") for k in ("0.95", "0.98")),
            str(s.get("steps_below_random_band", "—")),
            str(s.get("stop_suggested_labels") or "—"),
            f"{100 * gain:+.2f} pt" if gain is not None else "—",
        ])  # fmt: skip
    return _format(cols, rows)


def _paired_cells(s: dict) -> list[str]:
    """The compact table's seed-paired columns: bootstrap interval and AUC gain (ahead/seeds)."""
    vs = s.get("vs_random")
    if not vs:
        return ["—", "—"]
    lo, hi = (str(x) if x is not None else "never" for x in vs["labels_to_random_final_10_90"])
    gain = f"{100 * vs['auc_gain_mean']:+.2f} pt ({vs['seeds_ahead']}/{len(vs['auc_gain'])})"
    return [f"{lo}–{hi}", gain]


def summary_table(results: dict) -> str:
    """Per strategy: final accuracy, AUC, labels to 95/98% of full, savings vs random, rare F1."""
    full = results["full"]
    strategies = results["strategies"]
    rand = strategies.get("random")
    cfg = results["config"]
    present = sorted({s["seeds"] for s in strategies.values()} | {len(full["per_seed"])})
    seeds = "/".join(map(str, present)) + (
        f" of {cfg['seeds']}" if present != [cfg["seeds"]] else ""
    )
    head = (
        f"dataset {cfg['dataset']}  seeds present {seeds}  initial {cfg['initial']}  "
        f"query {cfg['query_size']} × {cfg['steps']} steps  model {cfg['train']['family']}  "
        f"early stopping on: {cfg['stop_on']}\n"
        f"full data ({full['labels']} labels): accuracy {100 * full['accuracy_mean']:.2f} "
        f"± {100 * full['accuracy_std']:.2f}, macro-F1 {100 * full['macro_f1_mean']:.2f}, "
        f"rare macro-F1 {100 * full['rare_f1_mean']:.2f}\n"
    )
    cols = ["strategy", "labels", "final acc %", "AUC %", "to 95%", "save vs rnd", "to 98%"]
    cols += ["save vs rnd", "to rnd final", "macro-F1 %", "rare F1 %", "s/step t|s|sel"]
    rows = []
    for name, s in strategies.items():
        f, lt = s["final"], s["labels_to"]
        rmax = rand["final"]["labels"] if rand else 0
        sec = s["seconds_per_step"]
        row = [
            name,
            str(f["labels"]),
            f"{100 * f['accuracy_mean']:.2f} ± {100 * f['accuracy_std']:.2f}",
        ]
        row.append(f"{100 * s['auc']:.2f}")
        for key in ("0.95", "0.98"):
            row.append(str(lt[key]) if lt[key] is not None else "not reached")
            row.append(
                _saving(lt[key], rand["labels_to"][key] if rand else None, rmax) if rand else "—"
            )
        rtr = s["labels_to_random_final"]
        row.append(str(rtr) if rtr is not None else "not reached")
        row.append(f"{100 * f['macro_f1_mean']:.2f}")
        row.append(f"{100 * f['rare_f1_mean']:.2f} ± {100 * f['rare_f1_std']:.2f}")
        row.append("|".join(f"{sec.get(p, 0):.2f}" for p in ("training", "scoring", "selection")))
        rows.append(row)
    return head + _format(cols, rows)


def published_table(results: dict) -> str:
    """seed-mnist: our mean ± std next to the published single-run numbers."""
    full, strategies = results["full"], results["strategies"]

    def ours(name: str) -> str:
        s = strategies.get(name)
        if s is None:
            return "not run"
        f = s["final"]
        return f"{100 * f['accuracy_mean']:.2f} ± {100 * f['accuracy_std']:.2f} ({f['labels']})"

    rows = [
        [
            "full 4000 (passive)",
            f"{100 * full['accuracy_mean']:.2f} ± {100 * full['accuracy_std']:.2f}",
            "92.25",
        ]
    ]
    rows.append(["random 400", ours("random"), "83.75"])
    rows.append(["least confidence 400", ours("least_confidence"), "89.75"])
    sl = strategies.get("least_confidence", {}).get("self_labelled")
    mine = "not reproduced (run with --self-label)"
    if sl:
        mine = (
            f"{100 * sl['accuracy_mean']:.2f} ± {100 * sl['accuracy_std']:.2f} "
            f"(p ≥ {sl['threshold']}: +{sl['pseudo_labels_mean']:.0f} pseudo, "
            f"{100 * sl['pseudo_correct_mean']:.1f}% right)"
        )
    rows.append(["least confidence 400 + self-labelling", mine, "90.50"])
    for extra in ("margin", "entropy", "bald"):
        if extra in strategies:
            rows.append([f"{extra} 400", ours(extra), "—"])
    note = (
        "Early stopping on the TEST split (as published): optimistic for every row alike. "
        "bald is refused for this model: softmax regression has no dropout, so BALD is 0 up "
        "to round-off and its ranking would be noise.\n"
    )
    return (
        _format(["seed-mnist (accuracy %)", "ours, mean ± std over seeds", "published"], rows)
        + note
    )


def _format(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cols), sep, *(line(r) for r in rows)]) + "\n"


def plot(results: dict, path: Path) -> None:
    """Accuracy and rare-class macro-F1 vs labels: mean ± std bands, the full-data line and
    the 95%/98%-of-full targets labelled, one legend, a short title naming the seeds present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    full = results["full"]
    for ax, metric, title in (
        (axes[0], "accuracy", "test accuracy"),
        (axes[1], "rare_f1", "rare-class macro-F1"),
    ):
        for name, s in results["strategies"].items():
            x = np.array(s["labels"])
            m, sd = np.array(s[metric]["mean"]), np.array(s[metric]["std"])
            (ln,) = ax.plot(x, m, label=f"{name} ({s['seeds']} seeds)")
            ax.fill_between(x, m - sd, m + sd, color=ln.get_color(), alpha=0.15)
        ref = full[f"{metric}_mean"]
        ax.axhline(ref, ls="--", color="k", label=f"full data ({full['labels']} labels)")
        if metric == "accuracy":
            for t, ls in zip(TARGETS, (":", "-."), strict=True):
                ax.axhline(t * ref, ls=ls, color="0.5", lw=1, label=f"{100 * t:.0f}% of full")
        ax.set_xlabel("labels")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    cfg = results["config"]
    seeds = sorted({s["seeds"] for s in results["strategies"].values()})
    fig.suptitle(f"{cfg['dataset']}: mean ± std over {'/'.join(map(str, seeds))} seeds")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict, out: Path) -> str:
    """results.json, curves.png and summary.txt under `out`; returns the printed tables."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    plot(results, out / "curves.png")
    text = summary_table(results) + "\n" + compact_table(results)
    if results["config"].get("preset") == "seed-mnist":
        text += "\n" + published_table(results)
    (out / "summary.txt").write_text(text)
    return text


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer | np.floating):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def with_defaults(config: dict, defaults: dict) -> dict:
    """`config` with every key it lacks taken from `defaults`, nested dicts too: a run made
    before a setting existed ran with that setting's default."""
    out = dict(config)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def merge(raws: list[dict], defaults: dict | None = None) -> dict:
    """One raw document from runs under the same protocol that differ only in their seeds
    (`--first-seed`) or strategies; full-data references are kept once per seed. Configs are
    compared with missing keys filled from `defaults` (the current `SimConfig`'s)."""
    configs = [with_defaults(r["config"], defaults or {}) for r in raws]
    strip = ("seeds", "first_seed", "strategies")
    for config in configs[1:]:
        if {k: v for k, v in config.items() if k not in strip} != {
            k: v for k, v in configs[0].items() if k not in strip
        }:
            raise SystemExit("runs differ in more than their seeds: not merged")
    merged: dict = {"config": configs[0], "full": [], "curves": {}}
    seen: set = set()
    for i, r in enumerate(raws):
        for k, f in enumerate(r["full"]):
            seed = f.get("seed", (i, k))
            if seed not in seen:
                seen.add(seed)
                merged["full"].append(f)
        for name, runs in r["curves"].items():
            merged["curves"].setdefault(name, []).extend(runs)
    merged["config"]["seeds"] = len(merged["full"])
    merged["config"]["strategies"] = [
        s for r in raws for s in r["config"]["strategies"] if s["label"] in merged["curves"]
    ]
    return merged


def main(argv: list[str]) -> None:
    """`python -m batch_jobs.sim_report DIR [RUN_DIR ...]`: rebuild the report in DIR from
    DIR/raw.json, or from the raw.json of each RUN_DIR merged (seed-split runs)."""
    if not argv:
        raise SystemExit("usage: python -m batch_jobs.sim_report DIR [RUN_DIR ...]")
    out = Path(argv[0])
    sources = [Path(a) for a in argv[1:]] or [out]
    from batch_jobs.simulate import config_defaults  # lazily: simulate imports this module

    raw = merge([json.loads((d / "raw.json").read_text()) for d in sources], config_defaults())
    if argv[1:]:
        out.mkdir(parents=True, exist_ok=True)
        (out / "raw.json").write_text(json.dumps(raw))
    print(write_outputs(summarise(raw, None), out))


if __name__ == "__main__":
    main(sys.argv[1:])
