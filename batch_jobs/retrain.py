"""Label fold-in: resolve labels, fine-tune the current model (active phase), gate, promote.

The gate set is every labeled *holdout* post (never trained on). It is also the early-stopping
and calibration set of `fold_in`, as it was for the bootstrap model, so both models are judged
on data they were tuned on; the comparison is like with like. With no labeled holdout post the
candidate is saved but NOT promoted (status "candidate", reason says why) — no silent pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from batch_jobs.active_step import fold_in
from batch_jobs.aggregation import aggregate_rows
from batch_jobs.config import CrowdConfig, JobConfig, Paths
from batch_jobs.faults import fault_point
from batch_jobs.leases import RETRAIN, lease_for
from batch_jobs.policy import CONTROL
from batch_jobs.self_training import pool_sample, with_pseudo_labels
from batch_jobs.stopping import stability
from batch_jobs.stores import Stores, job_stores
from model.classifier import Classifier
from model.evaluation import evaluate_model
from model.registry import ModelRegistry
from model.training import LabeledViews
from store.lease import Lease
from store.ledger import Ledger
from store.pool import Pool, id_hashes

log = logging.getLogger(__name__)
LOCK = RETRAIN


@dataclass(frozen=True)
class ResolvedLabels:
    """One label per post: the majority across assessors. Ties are left out (listed)."""

    post_ids: np.ndarray  # (n,) str
    labels: np.ndarray  # (n,) int64 class ids
    holdout: np.ndarray  # (n,) bool
    ties: list[str]
    unknown_class: list[str]  # posts whose winning label is not a class of the model


@dataclass
class RetrainReport:
    status: str  # skipped | promoted | rejected | candidate (saved, not evaluated: no gate)
    reason: str
    parent: str | None = None
    version: str | None = None
    new_labels: int = 0
    train_size: int = 0
    gate_size: int = 0
    ties: list[str] = field(default_factory=list)
    unknown_class: list[str] = field(default_factory=list)
    missing_embeddings: list[str] = field(default_factory=list)
    candidate: dict[str, float] | None = None  # gate metrics
    aggregation: dict[str, Any] = field(default_factory=dict)  # labels per method, exclusions
    current: dict[str, float] | None = None
    # Self-training (jobs.self_training): pseudo-labels added, threshold, its gate precision.
    self_training: dict[str, Any] | None = None
    # Stopping signal: share of gate posts the candidate predicts as the current model does.
    stability: float | None = None
    # The random control share (QueryConfig.random_share): per query model, its answers and
    # that model's accuracy on them, an estimate of its accuracy on the eligible pool that the
    # strategy's choice of posts does not bias.
    random_control: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_control(ledger: Ledger) -> dict[str, dict[str, float]]:
    """`{model_version: {"answers", "accuracy"}}` over the labels of random-control query items."""
    return {
        str(version): {"answers": n, "accuracy": round(agree / n, 4)}
        for version, n, agree in ledger.answers_by_reason(CONTROL)
    }


def resolve_crowd(
    ledger: Ledger, classes: list[str], crowd: CrowdConfig
) -> tuple[ResolvedLabels, dict[str, Any]]:
    """The labels retraining uses: aggregated over assessors (Dawid-Skene where posts have
    several labels, MV otherwise; see batch_jobs.aggregation), and how they were reached."""
    agg = aggregate_rows(ledger.labels(), classes, crowd, ledger.control_answers())
    resolved = ResolvedLabels(agg.post_ids, agg.labels, agg.holdout, agg.ties, agg.unknown_class)
    return resolved, agg.summary()


def evaluate(clf: Classifier, data: LabeledViews) -> dict[str, float]:
    """Accuracy and macro-F1 of the served predictions on `data` (`model.evaluation`)."""
    m = evaluate_model(clf, data)
    return {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "n": m.n}


def gather(
    pool: Pool, resolved: ResolvedLabels
) -> tuple[LabeledViews | None, np.ndarray, list[str]]:
    """Pooled embeddings of the resolved posts: `(data, holdout (k,) bool, ids not pooled)`."""
    found, views = pool.get(resolved.post_ids)
    missing = sorted(set(resolved.post_ids.tolist()) - set(found.tolist()))
    if len(found) == 0:
        return None, np.zeros(0, bool), missing
    where = {p: i for i, p in enumerate(resolved.post_ids.tolist())}
    rows = np.asarray([where[p] for p in found.tolist()], dtype=np.int64)
    return LabeledViews(views, resolved.labels[rows]), resolved.holdout[rows], missing


def decide(
    cand: dict[str, float], curr: dict[str, float] | None, tolerance: float
) -> tuple[bool, str]:
    """Promote when candidate gate accuracy >= current's - tolerance."""
    if curr is None:
        return True, f"no current model to compare with; gate accuracy {cand['accuracy']:.4f}"
    floor = curr["accuracy"] - tolerance
    verdict = ">=" if cand["accuracy"] >= floor else "<"
    reason = (
        f"gate accuracy {cand['accuracy']:.4f} {verdict} current {curr['accuracy']:.4f} "
        f"- tolerance {tolerance} (macro-F1 {cand['macro_f1']:.4f} vs {curr['macro_f1']:.4f}, "
        f"n={cand['n']})"
    )
    return cand["accuracy"] >= floor, reason


def retrain(
    paths: Paths, cfg: JobConfig, force: bool = False, stores: Stores | None = None
) -> RetrainReport:
    """Fold new labels into the current model; promote the candidate only if the gate agrees.

    Skips (with a reason) when fewer than `cfg.min_new_labels` labels were written since the
    current model was trained, unless `force`. Raises JobBusyError when another live retrain
    holds the lease, and JobCancelledError / LeaseLostError instead of promoting once the
    server is shutting down or the lease was lost (the candidate stays saved, unpromoted).
    """
    with (
        job_stores(paths, cfg, stores) as st,
        lease_for(st.ledger, LOCK, paths, cfg) as lease,
    ):
        return _retrain_locked(paths, cfg, st, lease, force)


def _retrain_locked(
    paths: Paths, cfg: JobConfig, stores: Stores, lease: Lease, force: bool
) -> RetrainReport:
    ledger = stores.ledger
    t0 = time.perf_counter()
    registry = ModelRegistry(paths.models)
    parent_version = registry.current_version()
    current = registry.load(parent_version)  # ModelUnavailableError before bootstrap
    record = ledger.get_model(parent_version) if parent_version else None
    seq = ledger.label_seq()
    new = ledger.count_labels_since(record.label_seq if record else 0)
    report = RetrainReport("skipped", "", parent=parent_version, new_labels=new)
    if new < cfg.min_new_labels and not force:
        report.reason = (
            f"{new} new labels since {parent_version} < min_new_labels {cfg.min_new_labels}"
        )
        return report
    resolved, report.aggregation = resolve_crowd(ledger, current.classes, cfg.crowd)
    report.random_control = random_control(ledger)
    report.ties, report.unknown_class = resolved.ties, resolved.unknown_class
    data, hold, report.missing_embeddings = gather(stores.pool, resolved)
    if data is None:
        report.reason = "no labeled post has an embedding in the pool"
        return report
    train, gate = data.take(np.flatnonzero(~hold)), data.take(np.flatnonzero(hold))
    report.train_size, report.gate_size = len(train), len(gate)
    if len(train) == 0:
        report.reason = "every labeled post is a holdout post: nothing to train on"
        return report
    if cfg.self_training.enabled:
        train = _self_train(cfg, stores, current, train, gate, report)
    report.seconds["load"] = time.perf_counter() - t0
    return _train_and_gate(cfg, ledger, lease, registry, current, train, gate, seq, report)


def _self_train(
    cfg: JobConfig,
    stores: Stores,
    current: Classifier,
    train: LabeledViews,
    gate: LabeledViews,
    report: RetrainReport,
) -> LabeledViews:
    """Confident pseudo-labels of a uniform sample of unlabeled, unqueried, non-holdout pool
    posts join the fine-tune; the threshold is chosen on the gate set."""
    excluded = np.unique(id_hashes(stores.ledger.excluded_post_ids()))
    sample = pool_sample(
        stores.pool, excluded, cfg.holdout_fraction,
        cfg.self_training.max_pool, cfg.engine.chunk_rows,
    )  # fmt: skip
    grown, pseudo = with_pseudo_labels(
        current, train, sample, gate if len(gate) else None, cfg.self_training
    )
    report.self_training = pseudo.report() | {"candidates": 0 if sample is None else len(sample)}
    return grown


def _train_and_gate(
    cfg: JobConfig,
    ledger: Ledger,
    lease: Lease,
    registry: ModelRegistry,
    current: Classifier,
    train: LabeledViews,
    gate: LabeledViews,
    seq: int,
    report: RetrainReport,
) -> RetrainReport:
    t0 = time.perf_counter()
    fault_point("retrain.train")
    candidate = fold_in(current, train, gate if len(gate) else None, current.classes, cfg.train)
    t1 = time.perf_counter()
    report.seconds["train"] = t1 - t0
    if len(gate):
        report.candidate, report.current = evaluate(candidate, gate), evaluate(current, gate)
        report.stability = stability(
            current.predict(gate.views).probs.argmax(1),
            candidate.predict(gate.views).probs.argmax(1),
        )
        promote, report.reason = decide(report.candidate, report.current, cfg.promote_tolerance)
        report.status = "promoted" if promote else "rejected"
    else:
        promote, report.status = False, "candidate"
        report.reason = (
            "no labeled holdout post: the gate cannot evaluate the candidate, so it is saved "
            "but not promoted (label some holdout posts, or promote it by hand)"
        )
    report.seconds["evaluate"] = time.perf_counter() - t1
    metrics = {"gate": report.candidate or {}, "current_gate": report.current or {}}
    lease.ensure_held()  # a cancelled or lost job stops here, before writing anything
    fault_point("retrain.before_save")
    report.version = registry.save(candidate, _flat(report.candidate), parent=report.parent)
    fault_point("retrain.before_promote")
    if promote:
        with lease.guard():  # never after shutdown began, never without the lease
            registry.promote(report.version)
            ledger.record_model(
                report.version, report.parent, report.status, metrics, report.reason, seq
            )
    else:
        ledger.record_model(
            report.version, report.parent, report.status, metrics, report.reason, seq
        )
    log.info("event=retrain status=%s version=%s %s", report.status, report.version, report.reason)
    return report


def _flat(metrics: dict[str, float] | None) -> dict[str, float]:
    return {f"gate_{k}": float(v) for k, v in (metrics or {}).items()}
