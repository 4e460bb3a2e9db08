"""Label aggregation over assessors: Dawid-Skene (crowd-kit) where items have several labels,
majority vote otherwise; per-item posterior confidence; per-assessor skill estimates.

The core takes integer vote arrays and returns arrays (`aggregate_votes`); the ledger adapter
(`aggregate_rows`) maps post/assessor/class names onto it, drops control answers from the votes,
and excludes assessors below the quality floor (with the reason) before the final pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from batch_jobs.config import CrowdConfig
from store.ledger import Ledger

METHODS = ("auto", "ds", "mv")  # auto: DS on items with ≥ 2 labels, MV on single-label items


@dataclass(frozen=True)
class Votes:
    """`m` answers: item `items[i]` got class `labels[i]` from worker `workers[i]`."""

    items: np.ndarray  # (m,) int64 item index
    workers: np.ndarray  # (m,) int64 worker index
    labels: np.ndarray  # (m,) int64 class id

    def __post_init__(self) -> None:
        n = len(self.items)
        if len(self.workers) != n or len(self.labels) != n:
            raise ValueError("items, workers and labels must have the same length")


@dataclass(frozen=True)
class Aggregate:
    """One label per item that received a vote, with its posterior and the method that chose it."""

    items: np.ndarray  # (k,) item index, sorted
    labels: np.ndarray  # (k,) int64 class id
    confidence: np.ndarray  # (k,) posterior probability of `labels` (MV: the vote share)
    method: np.ndarray  # (k,) str "ds" | "mv"
    tie: np.ndarray  # (k,) bool: MV found no single winner (DS never reports a tie)
    worker_accuracy: dict[int, float] = field(default_factory=dict)  # DS estimate per worker
    worker_confusion: dict[int, np.ndarray] = field(default_factory=dict)  # (C, C) P(ans | true)


def _frame(votes: Votes) -> Any:
    import pandas as pd

    return pd.DataFrame({"task": votes.items, "worker": votes.workers, "label": votes.labels})


def majority_vote(votes: Votes, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(items (k,), shares (k, C) vote share per class, tie (k,) bool)` by plain counting."""
    items, inverse = np.unique(votes.items, return_inverse=True)
    counts = np.zeros((len(items), n_classes), np.float64)  # (k, C)
    np.add.at(counts, (inverse, votes.labels), 1.0)
    shares = counts / counts.sum(1, keepdims=True)
    top = shares.max(1, keepdims=True)
    tie = (shares == top).sum(1) > 1
    return items, shares, tie


def dawid_skene(
    votes: Votes, n_classes: int, n_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, dict[int, float], dict[int, np.ndarray]]:
    """crowd-kit's Dawid-Skene EM: `(items (k,), posteriors (k, C), accuracy, confusion)`.

    `accuracy[w]` = Σ_c prior(c)·P(w answers c | true c) over the classes `w` answered
    (prior renormalised over them); `confusion[w]` is `(C, C)`, row = the
    true class, column = the answer (classes nobody answered get a zero column)."""
    from crowdkit.aggregation import DawidSkene  # imports nltk/sklearn: only when needed

    ds: Any = DawidSkene(n_iter=n_iter).fit(_frame(votes))
    items = np.asarray(ds.probas_.index, dtype=np.int64)
    order = np.argsort(items)
    post = np.zeros((len(items), n_classes), np.float64)  # (k, C)
    for col in ds.probas_.columns:
        post[:, int(col)] = ds.probas_[col].to_numpy()
    prior = np.zeros(n_classes)
    for c, p in ds.priors_.items():
        prior[int(c)] = float(p)
    accuracy: dict[int, float] = {}
    confusion: dict[int, np.ndarray] = {}
    for worker, frame in ds.errors_.groupby(level=0):
        conf = np.zeros((n_classes, n_classes))  # (true, answer)
        for (_w, answer), row in frame.iterrows():
            for true, p in row.items():
                conf[int(true), int(answer)] = float(p)
        seen = conf.sum(0) > 0  # classes this worker answered: the ones with evidence
        weight = prior * seen
        accuracy[int(worker)] = float(np.sum(weight * np.diag(conf)) / max(weight.sum(), 1e-12))
        confusion[int(worker)] = conf
    return items[order], post[order], accuracy, confusion


def aggregate_votes(
    votes: Votes, n_classes: int, method: str = "auto", n_iter: int = 100
) -> Aggregate:
    """One label per voted item. `auto`: Dawid-Skene for items with ≥ 2 votes, fitted on their
    votes only (a lone answer says nothing about agreement, and the ledger's many single-label
    posts would dominate the cost: 21k votes take ~12 s, the overlapping part a fraction), MV
    for the rest; `ds`: DS on every vote; `mv`: MV for all. DS runs only when some item has
    ≥ 2 votes (it cannot learn otherwise)."""
    if method not in METHODS:
        raise ValueError(f"unknown aggregation {method!r}; known {METHODS}")
    if len(votes.items) == 0:
        e = np.zeros(0, np.int64)
        return Aggregate(e, e, np.zeros(0), np.zeros(0, str), np.zeros(0, bool))
    items, shares, tie = majority_vote(votes, n_classes)
    n_votes = np.bincount(np.searchsorted(items, votes.items), minlength=len(items))  # (k,)
    use_ds = (n_votes >= 2) if method == "auto" else np.full(len(items), method == "ds")
    if method == "mv" or not (n_votes >= 2).any():
        use_ds[:] = False
    post = shares
    accuracy: dict[int, float] = {}
    confusion: dict[int, np.ndarray] = {}
    if use_ds.any():
        keep = use_ds[np.searchsorted(items, votes.items)]  # (m,) votes on the items DS decides
        sub = Votes(votes.items[keep], votes.workers[keep], votes.labels[keep])
        ds_items, ds_post, accuracy, confusion = dawid_skene(sub, n_classes, n_iter)
        post = shares.copy()
        post[np.searchsorted(items, ds_items)] = ds_post
    labels = post.argmax(1).astype(np.int64)
    return Aggregate(
        items,
        labels,
        post[np.arange(len(items)), labels],
        np.where(use_ds, "ds", "mv"),
        tie & ~use_ds,
        accuracy,
        confusion,
    )


# -- the ledger adapter -------------------------------------------------------------------------
@dataclass(frozen=True)
class AssessorQuality:
    """What the service knows about one assessor's skill."""

    assessor_id: str
    labels: int  # votes in the aggregation (control answers not counted)
    shared: int  # of them, on items that someone else labeled too (what DS learns from)
    control_answers: int
    control_accuracy: float | None  # None: no control answer yet
    ds_accuracy: float | None  # Dawid-Skene's estimate; None: DS did not run
    confusion: dict[str, dict[str, float]] = field(default_factory=dict)  # true → answer → p
    excluded: bool = False
    reason: str = ""

    def quality(self, min_evidence: int) -> float | None:
        """Control accuracy once there are `min_evidence` control answers, else DS's estimate
        once there are `min_evidence` shared labels, else None (not judged yet)."""
        if self.control_accuracy is not None and self.control_answers >= min_evidence:
            return self.control_accuracy
        return self.ds_accuracy if self.shared >= min_evidence else None


@dataclass(frozen=True)
class Aggregated:
    """One label per post from the ledger's rows, and how it was reached."""

    post_ids: np.ndarray  # (n,) str
    labels: np.ndarray  # (n,) int64 class ids
    holdout: np.ndarray  # (n,) bool
    confidence: np.ndarray  # (n,) posterior of the label
    method: np.ndarray  # (n,) "ds" | "mv"
    ties: list[str]
    unknown_class: list[str]  # posts whose winning label is not a class of the model
    assessors: list[AssessorQuality]
    low_confidence: list[str]  # posts below min_confidence (re-asked by the next query)

    def summary(self) -> dict[str, Any]:
        """For the retrain report: labels per method, exclusions with reasons, and each
        assessor's accuracy estimates (what the server's gauges show)."""
        kinds, counts = np.unique(self.method, return_counts=True)
        return {
            "methods": {str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
            "low_confidence": len(self.low_confidence),
            "excluded_assessors": {a.assessor_id: a.reason for a in self.assessors if a.excluded},
            "assessors": [{k: getattr(a, k) for k in GAUGED} for a in self.assessors],
        }


GAUGED = ("assessor_id", "control_accuracy", "ds_accuracy", "excluded")
LedgerRow = tuple[str, str, str, bool]  # (post_id, assessor_id, label, holdout)
ControlAnswer = tuple[str, str, str, str]  # (post_id, assessor_id, answer, gold label)


def aggregate_rows(
    rows: Sequence[LedgerRow],
    classes: Sequence[str],
    cfg: CrowdConfig,
    controls: Sequence[ControlAnswer] = (),
) -> Aggregated:
    """Aggregate ledger labels. Control answers are scored against their gold label and not
    voted; a label naming no class of the model makes its post `unknown_class` (as before).
    Assessors below `cfg.quality_floor` are excluded with the reason, then the votes re-run."""
    control_keys = {(p, a) for p, a, _ans, _gold in controls}
    votes = [r for r in rows if (r[0], r[1]) not in control_keys]
    first = _aggregate_named(votes, classes, cfg, controls, frozenset())
    low = {
        a.assessor_id
        for a in first.assessors
        if (q := a.quality(cfg.min_evidence)) is not None and q < cfg.quality_floor
    }
    if not low:
        return first
    second = _aggregate_named(votes, classes, cfg, controls, frozenset(low))
    before = {a.assessor_id: a for a in first.assessors}  # the excluded keep their estimates
    assessors = [
        replace(before[a.assessor_id], excluded=True) if a.assessor_id in low else a
        for a in second.assessors
    ]
    return replace(second, assessors=assessors)


def _aggregate_named(
    rows: Sequence[LedgerRow],
    classes: Sequence[str],
    cfg: CrowdConfig,
    controls: Sequence[ControlAnswer],
    excluded: frozenset[str],
) -> Aggregated:
    names = sorted({r[2] for r in rows} | set(classes))
    class_of = {c: i for i, c in enumerate(names)}  # unknown labels get ids past the classes
    posts = sorted({r[0] for r in rows})
    post_of = {p: i for i, p in enumerate(posts)}
    workers = sorted({r[1] for r in rows} | {c[1] for c in controls})
    worker_of = {w: i for i, w in enumerate(workers)}
    kept = [r for r in rows if r[1] not in excluded]
    votes = Votes(
        np.asarray([post_of[r[0]] for r in kept], np.int64),
        np.asarray([worker_of[r[1]] for r in kept], np.int64),
        np.asarray([class_of[r[2]] for r in kept], np.int64),
    )
    agg = aggregate_votes(votes, len(names), cfg.aggregate, cfg.ds_iterations)
    holdout = {r[0]: bool(r[3]) for r in rows}
    model_index = {c: i for i, c in enumerate(classes)}
    ids, labels, conf, meth, ties, unknown = [], [], [], [], [], []
    for k, item in enumerate(agg.items.tolist()):
        post, name = posts[item], names[int(agg.labels[k])]
        if agg.tie[k] and cfg.aggregate == "mv":
            ties.append(post)
        elif name not in model_index:
            unknown.append(post)
        else:
            ids.append(post)
            labels.append(model_index[name])
            conf.append(float(agg.confidence[k]))
            meth.append(str(agg.method[k]))
    quality = _qualities(workers, kept, controls, agg, names, excluded, cfg)
    conf_arr = np.asarray(conf, np.float64)
    return Aggregated(
        np.asarray(ids, dtype=str),
        np.asarray(labels, np.int64),
        np.asarray([holdout[p] for p in ids], dtype=bool),
        conf_arr,
        np.asarray(meth, dtype=str),
        ties,
        unknown,
        quality,
        [p for p, c in zip(ids, conf, strict=True) if c < cfg.min_confidence],
    )


def _qualities(
    workers: list[str],
    kept: Sequence[LedgerRow],
    controls: Sequence[ControlAnswer],
    agg: Aggregate,
    names: list[str],
    excluded: frozenset[str],
    cfg: CrowdConfig,
) -> list[AssessorQuality]:
    per_post: dict[str, int] = {}
    for r in kept:
        per_post[r[0]] = per_post.get(r[0], 0) + 1
    n_labels, shared = dict.fromkeys(workers, 0), dict.fromkeys(workers, 0)
    for r in kept:
        n_labels[r[1]] += 1
        shared[r[1]] += per_post[r[0]] >= 2
    right = {w: [0, 0] for w in workers}  # [correct, answered]
    for _p, a, answer, gold in controls:
        right[a][0] += answer == gold
        right[a][1] += 1
    out = []
    for i, w in enumerate(workers):
        correct, answered = right[w]
        ctrl = correct / answered if answered else None
        conf = agg.worker_confusion.get(i)
        q = AssessorQuality(w, n_labels[w], shared[w], answered, ctrl, agg.worker_accuracy.get(i))
        q = _with_confusion(q, conf, names) if conf is not None else q
        out.append(_flag(q, w in excluded, cfg))
    return out


def _with_confusion(q: AssessorQuality, conf: np.ndarray, names: list[str]) -> AssessorQuality:
    """Keep the confusion rows of classes the assessor answered, answers with p ≥ 0.01."""
    table = {
        names[t]: {names[a]: round(float(conf[t, a]), 4) for a in np.flatnonzero(conf[t] >= 0.01)}
        for t in range(len(names))
        if conf[t].sum() > 0
    }
    return replace(q, confusion=table)


def _flag(q: AssessorQuality, excluded: bool, cfg: CrowdConfig) -> AssessorQuality:
    score = q.quality(cfg.min_evidence)
    if score is None or score >= cfg.quality_floor:
        return q
    source = (
        f"control accuracy {score:.3f} on {q.control_answers} control items"
        if q.control_accuracy is not None and q.control_answers >= cfg.min_evidence
        else f"Dawid-Skene accuracy estimate {score:.3f} from {q.shared} shared labels"
    )
    reason = f"{source} < quality_floor {cfg.quality_floor}: labels excluded"
    return replace(q, excluded=excluded, reason=reason)


def assessor_quality(
    ledger: Ledger, classes: Sequence[str], cfg: CrowdConfig
) -> list[AssessorQuality]:
    """Every assessor's quality over the ledger's labels now (what retraining would decide)."""
    return aggregate_rows(ledger.labels(), classes, cfg, ledger.control_answers()).assessors
