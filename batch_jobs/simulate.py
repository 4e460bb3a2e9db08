"""Offline simulation: replay the active-learning loop on a labeled data set.

Per seed: a random initial labeled set from the train split, passive training, then per step
the query policy (`batch_jobs.policy`) over the unlabeled train rows → reveal the true labels
(or simulated assessors' aggregated answers, `--assessors`) → `fold_in` (the active phase) →
evaluate on the test split. The same functions the nightly job uses (no second loop).
Also trains the full-data reference (passive on every pool label) per seed.

    python -m batch_jobs.simulate --dataset reviews --strategies random,margin,margin+kmeans \\
        --initial 500 --query-size 20 --steps 25 --seeds 3 --out /tmp/sim
    python -m batch_jobs.simulate --preset seed-mnist --out /tmp/sim-mnist
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from acquisition.scores import STRATEGIES
from acquisition.stochastic import SAMPLINGS
from batch_jobs import sim_cache
from batch_jobs.active_step import QueryConfig, fold_in
from batch_jobs.assessors import CrowdOracle, make_oracle
from batch_jobs.datasets import DEFAULT_DATA_DIR, Dataset, load_dataset
from batch_jobs.policy import propose_in_memory
from batch_jobs.self_training import SelfTrainConfig, with_pseudo_labels
from batch_jobs.sim_report import summarise, write_outputs
from batch_jobs.stopping import stability
from model.classifier import Classifier
from model.evaluation import evaluate_model, rare_classes
from model.threads import set_threads
from model.training import LabeledViews, TrainConfig
from postclf_errors import InvalidInputError

DIVERSITY = ("kmeans", "kcenter")
STOP_ON = ("val", "test", "none")


@dataclass(frozen=True)
class StrategySpec:
    """One curve: a score plus optional stages, written `margin+power+kmeans+balance`.

    Stages: `kmeans`|`kcenter` (diversity), `balance`, `power`|`softmax` (sampling, at
    `SimConfig.temperature`), `typical` (typicality cold start below `cold_start_labels`),
    `control` (a `random_share` of each query drawn at random), `self` (self-training in
    the fold-in, `batch_jobs.self_training`)."""

    label: str
    strategy: str
    diversity: str | None = None
    balance: bool = False
    sampling: str = "top"
    cold_start: bool = False
    control: bool = False
    self_train: bool = False

    @classmethod
    def parse(cls, text: str, diversity: str | None = None, balance: bool = False) -> StrategySpec:
        """`score[+stage...]`; the global --diversity/--balance add stages."""
        parts = [p.strip() for p in text.split("+") if p.strip()]
        if not parts or parts[0] not in STRATEGIES:
            raise InvalidInputError(f"unknown strategy in {text!r}; known {sorted(STRATEGIES)}")
        div, bal, samp, cold, ctrl, selft = diversity, balance, "top", False, False, False
        for extra in parts[1:]:
            if extra in DIVERSITY:
                div = extra
            elif extra == "balance":
                bal = True
            elif extra in SAMPLINGS[1:]:
                samp = extra
            elif extra in ("typical", "control"):
                cold, ctrl = cold or extra == "typical", ctrl or extra == "control"
            elif extra == "self":
                selft = True
            else:
                raise InvalidInputError(f"unknown stage {extra!r} in {text!r}", "strategies")
        label = "+".join(
            [parts[0], *([samp] if samp != "top" else []), *([div] if div else []),
             *(["balance"] if bal else []), *(["typical"] if cold else []),
             *(["control"] if ctrl else []), *(["self"] if selft else [])]
        )  # fmt: skip
        return cls(label, parts[0], div, bal, samp, cold, ctrl, selft)

    def query(self, cfg: SimConfig) -> QueryConfig:
        """The QueryConfig of this curve under the run's settings."""
        return QueryConfig(
            self.strategy, cfg.query_size, cfg.candidate_factor, self.diversity, self.balance,
            cfg.mc_samples, self.sampling, cfg.temperature,
            cold_start_labels=cfg.cold_start_labels if self.cold_start else 0,
            cold_start_sample=max(cfg.cold_start_sample, cfg.query_size),
            random_share=cfg.random_share if self.control else 0.0,
        )  # fmt: skip


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulation run depends on (stored in results.json)."""

    dataset: str
    strategies: tuple[StrategySpec, ...]
    initial: int = 2000
    query_size: int = 20
    steps: int = 200
    seeds: int = 5
    first_seed: int = 0  # seeds first_seed .. first_seed+seeds-1 (split runs over processes)
    pool_limit: int = 100_000
    eval_every: int = 1
    stop_on: str = "val"  # early stopping on the val split, the test split (published), or none
    # "test": curves are measured on the test split. "val": on one half of the val split (the
    # other half stops and calibrates), so defaults can be chosen without touching test.
    eval_on: str = "test"
    temperature: float = 1.0  # of +power / +softmax sampling
    cold_start_labels: int = 1000  # +typical: typicality queries while fewer labels exist
    cold_start_sample: int = 20_000
    random_share: float = 0.05  # +control: this share of each query drawn at random
    self_training: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    stability_rows: int = 5000  # unlabeled pool rows the stopping signal compares on
    candidate_factor: int = 10
    mc_samples: int = 20
    rare_fraction: float = 1 / 3  # rare classes: this fraction of classes with fewest train rows
    self_label: float | None = None  # confidence threshold of a final self-labelling round
    retrain: str = "finetune"  # after each query: "finetune" (active phase) or "scratch" (passive)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None
    # Simulated assessors (batch_jobs.assessors): per-assessor accuracy; () = true labels.
    assessors: tuple[float, ...] = ()
    overlap: int = 1  # answers per asked row, from distinct assessors
    aggregate: str = "ds"  # ds (Dawid-Skene where rows have ≥ 2 answers) | mv


def config_defaults() -> dict:
    """A `SimConfig`'s defaults as stored in results.json (without dataset and strategies):
    what a run made before a setting existed ran with (`sim_report.merge`)."""
    out = asdict(SimConfig("", ()))
    del out["dataset"], out["strategies"]
    return out


@dataclass
class Curve:
    """One seed × one strategy: metrics at each evaluated step and per-step seconds."""

    labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    rare_f1: list[float] = field(default_factory=list)
    label_accuracy: list[float] = field(default_factory=list)  # simulated assessors only
    seconds: dict[str, list[float]] = field(default_factory=dict)
    self_labelled: dict[str, float] | None = None  # after the last step, see `self_label`
    stability: list[float] = field(default_factory=list)  # per step: predictions unchanged
    pseudo: list[dict] = field(default_factory=list)  # per step with +self: counts, precision

    def add_time(self, part: str, secs: float) -> None:
        self.seconds.setdefault(part, []).append(secs)


@dataclass(frozen=True)
class Split:
    """The simulation's view of a data set: pool (unlabeled train rows), stopping set, test."""

    pool: LabeledViews
    stop: LabeledViews | None
    test: LabeledViews
    classes: list[str]
    rare: np.ndarray  # (k,) class ids counted as rare


def make_split(ds: Dataset, cfg: SimConfig, seed: int) -> Split:
    """Pool = train rows (a seeded random subset past `pool_limit`); stopping set per `stop_on`."""
    ds = ds.with_split(seed)
    rng = np.random.default_rng([seed, 1])
    train_rows = ds.rows("train")
    if len(train_rows) > cfg.pool_limit:
        train_rows = np.sort(rng.choice(train_rows, cfg.pool_limit, replace=False))
    whole = LabeledViews(ds.views, ds.labels)
    test = whole.take(ds.rows("test"))
    val_rows = ds.rows("val")
    if cfg.eval_on == "val":
        if len(val_rows) < 2:
            raise InvalidInputError("needs a val split of at least 2 rows", "eval_on")
        val_rows = rng.permutation(val_rows)
        half = len(val_rows) // 2
        val_rows, test = np.sort(val_rows[:half]), whole.take(np.sort(val_rows[half:]))
    stop = {"val": whole.take(val_rows) if len(val_rows) else None, "test": test, "none": None}
    rare = rare_classes(ds.labels[train_rows], len(ds.class_names), cfg.rare_fraction)
    return Split(whole.take(train_rows), stop[cfg.stop_on], test, ds.class_names, rare)


def evaluate(clf: Classifier, test: LabeledViews, rare: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, macro-F1, macro-F1 over the rare classes) on `test` (`model.evaluation`)."""
    m = evaluate_model(clf, test, rare)
    return m.accuracy, m.macro_f1, m.rare_f1


def _record(
    curve: Curve, clf: Classifier, split: Split, labeled: int, oracle: CrowdOracle | None = None
) -> None:
    t0 = time.perf_counter()
    if oracle is not None:
        curve.label_accuracy.append(oracle.label_accuracy())
    acc, f1, rare = evaluate(clf, split.test, split.rare)
    curve.labels.append(labeled)
    curve.accuracy.append(acc)
    curve.macro_f1.append(f1)
    curve.rare_f1.append(rare)
    curve.add_time("evaluation", time.perf_counter() - t0)


def run_strategy(
    spec: StrategySpec,
    split: Split,
    start: tuple[np.ndarray, Classifier],
    cfg: SimConfig,
    seed: int,
    progress: tqdm | None = None,
    oracle: CrowdOracle | None = None,
) -> Curve:
    """Replay `cfg.steps` queries from the initial labeled rows and passive model `start`;
    with an `oracle`, simulated assessors answer instead of the true labels."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.label.encode())])
    train_cfg = replace(cfg.train, seed=seed)
    query = spec.query(cfg)
    labeled = np.zeros(len(split.pool), bool)
    labeled[start[0]] = True
    clf, curve = start[1], Curve()
    probe = np.random.default_rng([seed, 3]).permutation(len(split.pool))[: cfg.stability_rows]
    probe_views = split.pool.views.take(np.sort(probe))
    before = clf.predict(probe_views).probs.argmax(1)  # (p,)
    _record(curve, clf, split, int(labeled.sum()), oracle)
    for step in range(1, cfg.steps + 1):
        if (~labeled).sum() < cfg.query_size:
            break
        proposed = propose_in_memory(clf, split.pool.views, labeled, query, rng)
        labeled[proposed.indices] = True  # the assessor answers with the true labels
        t0 = time.perf_counter()
        parent = clf if cfg.retrain == "finetune" else None  # None: fold_in trains from scratch
        grown = split.pool.take(np.flatnonzero(labeled))
        if oracle is not None:
            oracle.ask(proposed.indices)
            grown = oracle.grown(split.pool)
        if spec.self_train:
            grown = _with_pseudo(curve, clf, grown, split, labeled, cfg)
        clf = fold_in(parent, grown, split.stop, split.classes, train_cfg)
        curve.add_time("training", time.perf_counter() - t0)
        after = clf.predict(probe_views).probs.argmax(1)  # (p,) label-free stopping signal
        curve.stability.append(stability(before, after))
        before = after
        curve.add_time("scoring", proposed.timings["scoring"])
        curve.add_time("selection", proposed.timings["selection"])
        if step % cfg.eval_every == 0:
            _record(curve, clf, split, int(labeled.sum()), oracle)
        if progress is not None:
            progress.update(1)
    if curve.labels[-1] != labeled.sum():
        _record(curve, clf, split, int(labeled.sum()), oracle)
    if cfg.self_label is not None:
        curve.self_labelled = self_label(clf, split, labeled, cfg.self_label, train_cfg)
    return curve


def _with_pseudo(
    curve: Curve,
    clf: Classifier,
    grown: LabeledViews,
    split: Split,
    labeled: np.ndarray,
    cfg: SimConfig,
) -> LabeledViews:
    """Self-training (the nightly's implementation): pseudo-labels of unlabeled pool rows;
    their true precision is recorded (the simulator knows the answers)."""
    rest = np.flatnonzero(~labeled)
    grown, pseudo = with_pseudo_labels(
        clf, grown, split.pool.views.take(rest), split.stop, cfg.self_training
    )
    curve.pseudo.append(pseudo.report(split.pool.labels[rest[pseudo.rows]]))
    return grown


def self_label(
    clf: Classifier, split: Split, labeled: np.ndarray, threshold: float, train_cfg: TrainConfig
) -> dict[str, float]:
    """Confident self-labelling: the unlabeled pool rows predicted with probability ≥ `threshold`
    join the true labels with their predicted class; one more `fold_in`, then evaluate."""
    rest = np.flatnonzero(~labeled)
    probs = clf.predict(split.pool.views.take(rest)).probs  # (r, C)
    sure = probs.max(1) >= threshold
    pseudo_rows, pseudo = rest[sure], probs[sure].argmax(1)
    true_rows = np.flatnonzero(labeled)
    grown = LabeledViews(
        split.pool.views.take(np.concatenate([true_rows, pseudo_rows])),
        np.concatenate([split.pool.labels[true_rows], pseudo]),
    )
    clf = fold_in(clf, grown, split.stop, split.classes, train_cfg)
    acc, f1, rare = evaluate(clf, split.test, split.rare)
    return {
        "threshold": threshold,
        "pseudo_labels": int(sure.sum()),
        "pseudo_correct": float((pseudo == split.pool.labels[pseudo_rows]).mean())
        if sure.any()
        else 0.0,
        "accuracy": acc,
        "macro_f1": f1,
        "rare_f1": rare,
    }


def initial_model(
    split: Split, cfg: SimConfig, seed: int, oracle: CrowdOracle | None = None
) -> tuple[np.ndarray, Classifier]:
    """The seed's random initial labeled rows `(initial,)` and the passive model trained on them
    (on the `oracle`'s aggregated answers when one is given)."""
    rng = np.random.default_rng([seed, 2])
    if cfg.initial > len(split.pool):
        raise InvalidInputError(f"initial {cfg.initial} > pool {len(split.pool)}", "initial")
    rows = np.sort(rng.choice(len(split.pool), cfg.initial, replace=False))
    train_cfg = replace(cfg.train, seed=seed)
    labeled = split.pool.take(rows)
    if oracle is not None:
        oracle.ask(rows)
        labeled = oracle.grown(split.pool)
    return rows, fold_in(None, labeled, split.stop, split.classes, train_cfg)


def full_reference(split: Split, cfg: SimConfig, seed: int) -> dict[str, float]:
    """Passive training on every pool label: the curve's ceiling (dashed line)."""
    t0 = time.perf_counter()
    clf = fold_in(None, split.pool, split.stop, split.classes, replace(cfg.train, seed=seed))
    acc, f1, rare = evaluate(clf, split.test, split.rare)
    secs = time.perf_counter() - t0
    return {
        "seed": seed,
        "labels": len(split.pool),
        "accuracy": acc,
        "macro_f1": f1,
        "rare_f1": rare,
        "seconds": secs,
    }


def degenerate(spec: StrategySpec, cfg: SimConfig, ds: Dataset) -> str | None:
    """Why `spec` cannot give a real curve for this model and data (None: it can)."""
    strategy = STRATEGIES[spec.strategy]
    if strategy.needs_mc and (cfg.train.family != "trident" or cfg.train.dropout == 0):
        return f"{spec.label}: the {cfg.train.family} model has no dropout, so BALD is 0 (noise)"
    views = sum(d is not None for d in ds.views.dims.values())
    if strategy.needs_heads and views < 2:
        return f"{spec.label}: one view means one head, a committee that cannot disagree"
    if spec.self_train and cfg.stop_on != "val":
        # Its threshold is chosen on the stopping split: on test, that is test-set tuning.
        return f"{spec.label}: self-training needs a validation split (stop_on is {cfg.stop_on})"
    return None


def simulate(
    ds: Dataset,
    cfg: SimConfig,
    checkpoint: Path | None = None,
    show_progress: bool = True,
    cache: Path | None = None,
) -> dict:
    """Run every seed × strategy; returns the raw per-seed curves and the full references.

    With `checkpoint`, the raw results so far are rewritten there after every strategy run
    (`python -m batch_jobs.sim_report DIR` rebuilds the report from them). `cache`: a folder
    for the full-data references (`batch_jobs.sim_cache`). Raises InvalidInputError naming
    the strategies that are degenerate for this model and data.
    """
    bad = [why for spec in cfg.strategies if (why := degenerate(spec, cfg, ds))]
    if bad:
        raise InvalidInputError("degenerate for this model: " + "; ".join(bad), "strategies")
    raw: dict = {"config": asdict(cfg), "full": [], "curves": {s.label: [] for s in cfg.strategies}}
    total = cfg.seeds * (2 + len(cfg.strategies) * cfg.steps)  # + full reference, initial model
    with tqdm(total=total, desc="simulate", disable=not show_progress) as bar:
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            split = make_split(ds, cfg, seed)
            bar.set_postfix(seed=seed, phase="full-data reference")
            raw["full"].append(_cached_full(ds, split, cfg, seed, cache))
            bar.update(1)
            oracle = make_oracle(
                cfg.assessors, cfg.overlap, cfg.aggregate, split.pool, len(split.classes), seed
            )
            bar.set_postfix(seed=seed, phase="initial model")
            start = initial_model(split, cfg, seed, oracle)
            bar.update(1)
            for spec in cfg.strategies:
                bar.set_postfix(seed=seed, strategy=spec.label)
                crowd = oracle.copy() if oracle is not None else None
                curve = run_strategy(spec, split, start, cfg, seed, bar, crowd)
                raw["curves"][spec.label].append(asdict(curve))
                if checkpoint is not None:
                    checkpoint.write_text(json.dumps(raw))
    return raw


def _cached_full(
    ds: Dataset, split: Split, cfg: SimConfig, seed: int, cache: Path | None
) -> dict[str, float]:
    k = sim_cache.key(ds, cfg, seed)
    hit = sim_cache.load(cache, k)
    if hit is not None:
        return hit | {"cached": True}
    full = full_reference(split, cfg, seed)
    sim_cache.store(cache, k, full)
    return full


# -- command line -------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    "seed-mnist": {
        # The published MNIST run: softmax regression, Adam lr 0.1, full batch, stopped at the
        # best TEST accuracy after 10 non-improving steps; 10 random, then 39 queries of 10.
        "dataset": "mnist_seed",
        # bald is refused here: softmax regression has no dropout (see `degenerate`).
        "strategies": "least_confidence,random,margin,entropy",
        # Self-labelling threshold 0.9, fixed a priori (the published text gives none and
        # this protocol has no validation split to choose one on); pseudo-label precision is
        # reported next to the result.
        "self_label": 0.9,
        "initial": 10,
        "query_size": 10,
        "steps": 39,
        "seeds": 5,
        "stop_on": "test",
        "train": {
            "family": "linear",
            "lr": 0.1,
            "finetune_lr": 0.1,
            "base_batch": 1_000_000_000,  # ≥ n: one full batch per epoch, an epoch is one step
            "weight_decay": 0.0,
            "max_epochs": 2000,
            "finetune_max_epochs": 2000,
            "patience": 10,
            "monitor": "accuracy",
            "calibrate": False,
            "standardize": False,  # the published inputs are pixels / 255 as they are
        },
    },
}
SELF_FLAGS: dict[str, tuple[str, dict, str]] = {  # --self-<flag> → (SelfTrainConfig field, ...)
    "precision": ("target_precision", {"type": float}, "validation precision needed (0.9)"),
    "max-ratio": ("max_ratio", {"type": float}, "pseudo-labels at most this × true labels (8)"),
    "order": (
        "order",
        {"choices": ["confident", "random"]},
        "which rows above the threshold fill a class's cap (random)",
    ),
    "weight": ("weight", {"type": float}, "loss weight of a pseudo-labeled row (1)"),
    "agreement": (
        "agreement",
        {"choices": ["none", "knn"]},
        "knn = only rows whose nearest labeled posts vote the model's class (none)",
    ),
}
TRAIN_FLAGS = {  # CLI flag → TrainConfig field
    "model": "family",
    "d": "d",
    "dropout": "dropout",
    "base_batch": "base_batch",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "epochs": "max_epochs",
    "patience": "patience",
    "finetune_lr": "finetune_lr",
    "finetune_epochs": "finetune_max_epochs",
    "monitor": "monitor",
}
SIM_FLAGS: tuple[str, ...] = (
    "initial",
    "query_size",
    "steps",
    "seeds",
    "first_seed",
    "pool_limit",
    "eval_every",
    "stop_on",
)
SIM_FLAGS += ("candidate_factor", "mc_samples", "self_label", "retrain", "eval_on")
SIM_FLAGS += ("temperature", "cold_start_labels", "random_share")
SIM_FLAGS += ("assessors", "overlap", "aggregate")


def _accuracies(text: str) -> tuple[float, ...]:
    """`0.9,0.75,0.6` → (0.9, 0.75, 0.6); each in [0, 1]."""
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--assessors: {err}") from err
    if not out or not all(0.0 <= a <= 1.0 for a in out):
        raise argparse.ArgumentTypeError("--assessors: accuracies in [0, 1], comma-separated")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m batch_jobs.simulate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--dataset", help="name in --data-dir (reviews, mnist_seed) or a path")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--strategies", help="comma list, stages with +: random,margin,margin+kmeans")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--diversity", choices=["none", *DIVERSITY], default="none")
    p.add_argument("--balance", action="store_true")
    p.add_argument("--stop-on", choices=STOP_ON)
    p.add_argument(
        "--eval-on",
        choices=["test", "val"],
        help="val: measure on half the val split (the other half stops): for choosing defaults",
    )
    p.add_argument("--no-calibrate", action="store_true")
    p.add_argument(
        "--first-seed", type=int, help="first seed (default 0); merge runs with sim_report"
    )
    for name in ("initial", "query_size", "steps", "seeds", "pool_limit", "eval_every", "d"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("candidate_factor", "mc_samples", "base_batch", "epochs", "patience"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--finetune-epochs", type=int)
    for name in ("dropout", "lr", "weight_decay", "finetune_lr"):
        p.add_argument("--" + name.replace("_", "-"), type=float)
    p.add_argument("--model", choices=["trident", "linear"])
    p.add_argument("--temperature", type=float, help="+power/+softmax sampling temperature (1)")
    p.add_argument(
        "--cold-start-labels", type=int, help="+typical: typicality below this many labels (1000)"
    )
    p.add_argument("--random-share", type=float, help="+control: random share of a query (0.05)")
    p.add_argument(
        "--self-label",
        type=float,
        help="after the last step, add unlabeled rows "
        "predicted with at least this confidence as pseudo-labels and retrain once",
    )
    p.add_argument("--monitor", choices=["loss", "accuracy"])
    p.add_argument("--retrain", choices=["finetune", "scratch"], help="default finetune")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("var/sim_cache"),
        help="full-data references cached per data set and protocol ('' to disable)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy box)")
    p.add_argument(
        "--assessors",
        type=_accuracies,
        help="simulated assessors' accuracies, e.g. 0.9,0.75,0.6 (default: true labels)",
    )
    p.add_argument("--overlap", type=int, help="answers per asked row (default 1)")
    p.add_argument("--aggregate", choices=["ds", "mv"], help="default ds")
    p.add_argument(
        "--self-per-class",
        action="store_true",
        help="+self: one confidence threshold per predicted class (chosen on validation)",
    )
    for flag, (field_name, kwargs, text) in SELF_FLAGS.items():
        p.add_argument(f"--self-{flag}", dest=f"self_{field_name}", help=f"+self: {text}", **kwargs)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> SimConfig:
    """Preset values first, then every flag given on the command line."""
    preset = dict(PRESETS[args.preset]) if args.preset else {}
    train = dict(preset.pop("train", {}))
    for flag, fld in TRAIN_FLAGS.items():
        if getattr(args, flag) is not None:
            train[fld] = getattr(args, flag)
    if args.no_calibrate:
        train["calibrate"] = False
    sim = {k: v for k, v in preset.items() if k != "strategies"}
    sim |= {k: getattr(args, k) for k in SIM_FLAGS if getattr(args, k) is not None}
    sim["dataset"] = args.dataset or preset.get("dataset")
    names = args.strategies or preset.get("strategies")
    if not sim["dataset"] or not names:
        raise SystemExit("--dataset and --strategies are required without a --preset")
    div = None if args.diversity == "none" else args.diversity
    specs = tuple(StrategySpec.parse(s, div, args.balance) for s in names.split(","))
    if len({s.label for s in specs}) != len(specs):
        raise SystemExit(f"duplicate strategies in {names!r}")
    if sim.get("eval_every", 1) < 1:
        raise SystemExit("--eval-every must be ≥ 1")
    self_train = {f: getattr(args, f"self_{f}") for f, _, _ in SELF_FLAGS.values()}
    self_train["per_class"] = args.self_per_class or None
    if any(v is not None for v in self_train.values()):
        given = {k: v for k, v in self_train.items() if v is not None}
        sim["self_training"] = SelfTrainConfig(**given)
    return SimConfig(strategies=specs, train=TrainConfig(**train), preset=args.preset, **sim)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    if args.threads:
        set_threads(args.threads)
    ds = load_dataset(cfg.dataset, args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cache = args.cache_dir if str(args.cache_dir) not in ("", ".") else None
    raw = simulate(ds, cfg, args.out / "raw.json", show_progress=not args.quiet, cache=cache)
    results = summarise(raw, time.perf_counter() - t0)
    print(write_outputs(results, args.out))


if __name__ == "__main__":
    main()
