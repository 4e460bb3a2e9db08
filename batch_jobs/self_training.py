"""Self-training in the fold-in: confident pseudo-labels from the unlabeled pool join the
active-phase fine-tune. One implementation for the nightly retrain and the simulator.

- The confidence threshold is chosen on the validation (gate) split: the lowest candidate
  threshold whose validation precision (accuracy of the rows at or above it) reaches
  `target_precision` on at least `min_val_rows` rows; none qualifies → no pseudo-labels.
  With `per_class`, one such threshold per predicted class, on that class's rows.
- Per-class caps: at most `ceil(max_ratio · true labels / classes)` per predicted class (the
  a uniform draw among the rows above the threshold, or the most confident first with
  `order="confident"`), so a dominant class cannot flood the fine-tune.
- Optional co-training filter (`agreement="knn"`): a row, candidate or validation, counts only
  where the model's class equals the similarity-weighted vote of its `knn_k` nearest true-labeled
  posts in embedding space (cosine on the raw views), a second opinion that shares no weights
  with the model. The threshold is then chosen on the agreeing validation rows.
- Callers pass only eligible pool rows: never labeled, queried, gate or holdout posts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from acquisition.diversity import normalise
from model.classifier import Classifier
from model.data import Views
from model.training import LabeledViews
from postclf_errors import InvalidInputError
from store.ledger import hash_holdout
from store.pool import Pool, sorted_contains


@dataclass(frozen=True)
class SelfTrainConfig:
    """On by default: with the typicality cold start, the simulator's best policy on reviews'
    val split (4 seeds; README, "Nightly default")."""

    enabled: bool = True
    thresholds: tuple[float, ...] = (0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    target_precision: float = 0.9  # validation precision the chosen threshold must reach
    min_val_rows: int = 20  # validation rows at or above a threshold for it to count
    # Pseudo-labels at most this many times the true labels (split evenly over classes). On
    # reviews' val split (4 seeds, random fill) 4 and 8 beat 2 on every seed, 8 with the higher
    # rare-class F1; past 8 the threshold, not the cap, bounds them (README, "Nightly default").
    max_ratio: float = 8.0
    max_pool: int = 50_000  # pool rows considered (a uniform sample by id hash)
    # One threshold per predicted class, each reaching `target_precision` on that class's
    # validation rows (at least `min_val_rows` of them; a class with fewer gets none). A
    # global threshold lets the classes that absorb the rare ones (confident, wrong) in.
    per_class: bool = False
    # Which qualifying rows fill a class's cap: "random" (a uniform draw among the rows at or
    # above the threshold: the precision the validation split estimated, rows nearer the
    # boundary) or "confident" (most confident first: the rows the model needs least). Random
    # was ahead on reviews' val split: at max_ratio 2 fewer labels on 3 of 4 seeds, a tie on
    # the 4th; at 8 a larger AUC gain over random on 3 of 4 (README, "Nightly default").
    order: str = "random"
    # Loss weight of a pseudo-labeled row (a true label weighs 1): below 1 the ~10% wrong
    # pseudo-labels pull less against the true ones, but 0.5 lost on every seed of reviews'
    # val split (README, "Nightly default"), so 1 stays.
    weight: float = 1.0
    # "knn": only rows where the model agrees with the vote of their nearest true-labeled
    # posts (see the module docstring); "none": the model's confidence alone.
    agreement: str = "none"
    knn_k: int = 10
    # True labels the vote reads at most (a uniform sample past it): the search costs
    # candidates × this many dot products.
    knn_max_labeled: int = 50_000

    def __post_init__(self) -> None:
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise InvalidInputError("need one or more values in (0, 1)", "self_training.thresholds")
        if not 0.0 < self.target_precision <= 1.0:
            raise InvalidInputError("must be in (0, 1]", "self_training.target_precision")
        if self.order not in ("confident", "random"):
            raise InvalidInputError('must be "confident" or "random"', "self_training.order")
        if self.agreement not in ("none", "knn"):
            raise InvalidInputError('must be "none" or "knn"', "self_training.agreement")
        if self.knn_k < 1 or self.knn_max_labeled < 1:
            raise InvalidInputError("must be >= 1", "self_training.knn_k")
        if not 0.0 < self.weight <= 1.0:
            raise InvalidInputError("must be in (0, 1]", "self_training.weight")
        if self.max_ratio < 0 or self.min_val_rows < 1 or self.max_pool < 1:
            raise InvalidInputError(
                "max_ratio >= 0, min_val_rows >= 1, max_pool >= 1", "self_training"
            )


@dataclass(frozen=True)
class PseudoLabels:
    """`rows (k,)` into the candidate arrays, `labels (k,)` predicted classes, the threshold
    chosen (None: none qualified) and its validation precision."""

    rows: np.ndarray
    labels: np.ndarray
    threshold: float | None
    val_precision: float | None

    def report(self, true: np.ndarray | None = None) -> dict[str, float | int | None]:
        """Counts and precision: measured against `true (k,)` when known (the simulator),
        else the validation estimate only (the nightly)."""
        out: dict[str, float | int | None] = {
            "pseudo_labels": int(self.rows.shape[0]),
            "threshold": self.threshold,
            "val_precision": self.val_precision,
        }
        if true is not None:
            out["precision"] = float((true == self.labels).mean()) if self.rows.size else None
        return out


def _lowest_threshold(
    conf: np.ndarray, right: np.ndarray, cfg: SelfTrainConfig
) -> tuple[float | None, float | None]:
    """The lowest of `cfg.thresholds` whose rows (`conf (v,)` at or above it) number at least
    `min_val_rows` and are `right (v,)` at `target_precision`; with that precision."""
    for t in sorted(cfg.thresholds):
        sure = conf >= t
        if sure.sum() < cfg.min_val_rows:
            break  # higher thresholds keep fewer rows still
        precision = float(right[sure].mean())
        if precision >= cfg.target_precision:
            return t, precision
    return None, None


def choose_threshold(
    val_probs: np.ndarray, val_labels: np.ndarray, cfg: SelfTrainConfig
) -> tuple[float | None, float | None]:
    """(threshold, its validation precision) from `val_probs (v, C)`, `val_labels (v,)`."""
    conf, pred = val_probs.max(axis=1), val_probs.argmax(axis=1)  # (v,), (v,)
    return _lowest_threshold(conf, pred == val_labels, cfg)


def class_thresholds(
    val_probs: np.ndarray, val_labels: np.ndarray, cfg: SelfTrainConfig
) -> tuple[np.ndarray, float | None]:
    """`(C,)` thresholds (inf: that class gets no pseudo-labels) and the validation precision
    of all rows they accept, from `val_probs (v, C)` and `val_labels (v,)`: the same rule as
    `choose_threshold`, on each predicted class's rows."""
    conf, pred = val_probs.max(axis=1), val_probs.argmax(axis=1)  # (v,), (v,)
    right = pred == val_labels  # (v,)
    out = np.full(val_probs.shape[1], np.inf)
    for c in range(val_probs.shape[1]):
        mine = pred == c
        t, _ = _lowest_threshold(conf[mine], right[mine], cfg)
        if t is not None:
            out[c] = t
    taken = conf >= out[pred]
    precision = float(right[taken].mean()) if taken.any() else None
    return out, precision


def select_pseudo(
    probs: np.ndarray,
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    n_true: int,
    cfg: SelfTrainConfig,
) -> PseudoLabels:
    """Pseudo-labels among candidate rows `probs (n, C)`; `n_true` true labels set the caps."""
    if probs.ndim != 2 or val_probs.ndim != 2 or val_probs.shape[0] != val_labels.shape[0]:
        raise InvalidInputError("need probs (n, C), val_probs (v, C), val_labels (v,)", "probs")
    none = PseudoLabels(np.zeros(0, np.int64), np.zeros(0, np.int64), None, None)
    if cfg.per_class:
        per, precision = class_thresholds(val_probs, val_labels, cfg)
        qualified = per[np.isfinite(per)]
        t = float(qualified.min()) if qualified.size else None  # reported: the loosest
    else:
        t, precision = choose_threshold(val_probs, val_labels, cfg)
        per = np.full(val_probs.shape[1], np.inf if t is None else t)
    if t is None or probs.shape[0] == 0:
        return PseudoLabels(none.rows, none.labels, t, precision)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    cap = math.ceil(cfg.max_ratio * n_true / probs.shape[1])
    sure = np.flatnonzero(conf >= per[pred])
    if cfg.order == "random":  # a seeded shuffle: same inputs, same pseudo-labels
        sure = np.random.default_rng([n_true, probs.shape[0]]).permutation(sure)
    else:
        sure = sure[np.lexsort((sure, -conf[sure]))]  # most confident first, ties by row
    order = np.argsort(pred[sure], kind="stable")  # grouped by class, confidence order kept
    grouped = sure[order]
    starts = np.searchsorted(pred[grouped], np.arange(probs.shape[1]))
    rank = np.arange(grouped.shape[0]) - starts[pred[grouped]]  # rank inside the class
    rows = np.sort(grouped[rank < cap])
    return PseudoLabels(rows.astype(np.int64), pred[rows].astype(np.int64), t, precision)


def with_pseudo_labels(
    clf: Classifier,
    labeled: LabeledViews,
    candidates: Views | None,
    val: LabeledViews | None,
    cfg: SelfTrainConfig,
) -> tuple[LabeledViews, PseudoLabels]:
    """The true labels plus `clf`'s confident pseudo-labels of `candidates` (eligible pool
    rows only). Without a validation set no threshold can be chosen: nothing is added."""
    empty = PseudoLabels(np.zeros(0, np.int64), np.zeros(0, np.int64), None, None)
    if val is None or len(val) == 0 or candidates is None or len(candidates) == 0:
        return labeled, empty
    probs = clf.predict(candidates).probs  # (n, C)
    val_probs = clf.predict(val.views).probs  # (v, C)
    if cfg.agreement == "knn":
        n_classes, k, most = probs.shape[1], cfg.knn_k, cfg.knn_max_labeled
        vote, val_vote = knn_votes([candidates, val.views], labeled, n_classes, k, most)
        probs, val_probs = _agreeing(probs, vote), _agreeing(val_probs, val_vote)
    pseudo = select_pseudo(probs, val_probs, val.labels, len(labeled), cfg)
    if not pseudo.rows.size:
        return labeled, pseudo
    weights = None  # all ones: the plain loss
    if cfg.weight != 1.0 or labeled.weights is not None:
        pseudo_w = np.full(pseudo.rows.shape[0], cfg.weight, np.float32)
        weights = np.concatenate([labeled.row_weights(), pseudo_w])
    grown = LabeledViews(
        Views.concat([labeled.views, candidates.take(pseudo.rows)]),
        np.concatenate([labeled.labels, pseudo.labels]),
        weights,
    )
    return grown, pseudo


def joint_embedding(views: Views) -> np.ndarray:
    """`(n, F)` float32: each present view scaled to unit length (a missing one is zeros),
    side by side, then the row scaled to unit length: cosine = the mean of the views' cosines
    where both rows have both views."""
    parts = [normalise(x * m[:, None]) for x, m in _present(views)]
    return normalise(np.concatenate(parts, axis=1))


def _present(views: Views) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for x, m in ((views.image, views.image_mask), (views.text, views.text_mask)):
        if x is not None and m is not None:
            out.append((x, m))
    return out


def knn_votes(
    parts: list[Views], labeled: LabeledViews, n_classes: int, k: int, max_labeled: int
) -> list[np.ndarray]:
    """Per part `(q,)`: the class with the largest summed cosine among each query's `k`
    nearest rows of `labeled` (at most `max_labeled` of them, a seeded uniform sample), from
    one FAISS exact index built once for all parts."""
    rows = np.arange(len(labeled))
    if rows.size > max_labeled:
        rows = np.sort(np.random.default_rng(rows.size).choice(rows, max_labeled, replace=False))
    index = faiss.IndexFlatIP(sum(x.shape[1] for x, _ in _present(labeled.views)))
    index.add(joint_embedding(labeled.views.take(rows)))
    out = []
    for queries in parts:
        sim, near = index.search(joint_embedding(queries), min(k, rows.size))  # (q, k) each
        votes = np.zeros((len(queries), n_classes))
        who = np.repeat(np.arange(len(queries)), near.shape[1])
        np.add.at(votes, (who, labeled.labels[rows][near].ravel()), np.maximum(sim, 0.0).ravel())
        out.append(votes.argmax(axis=1))
    return out


def _agreeing(probs: np.ndarray, vote: np.ndarray) -> np.ndarray:
    """`probs (n, C)` with the rows whose argmax is not `vote (n,)` zeroed: no threshold
    accepts them, on the candidates and on the validation rows alike."""
    return probs * (probs.argmax(axis=1) == vote)[:, None]


def pool_sample(
    pool: Pool, excluded: np.ndarray, holdout_fraction: float, max_rows: int, chunk_rows: int
) -> Views | None:
    """A uniform sample (the smallest id hashes) of at most `max_rows` pooled posts that are
    not `excluded (e,)` (sorted hashes of labeled and queried posts) and not holdout posts.
    Memory: `max_rows` hashes and locators while scanning, then the sample's views."""
    best = np.zeros(0, np.uint64)
    for ref in pool.chunks(pool.segments(include_kept=False), chunk_rows):
        hashes = pool.load(ref).hashes
        fresh = hashes[~sorted_contains(excluded, hashes)]
        best = np.unique(np.concatenate([best, fresh]))[:max_rows]  # sorted, smallest kept
    if not best.size:
        return None
    ids = _ids_of(pool, best, chunk_rows)
    ids = [p for p in ids if not hash_holdout(p, holdout_fraction)]  # never a gate post
    return pool.get(ids)[1] if ids else None


def _ids_of(pool: Pool, hashes: np.ndarray, chunk_rows: int) -> list[str]:
    """Post ids of the pooled rows with these `hashes` (sorted), first copy of each."""
    out: dict[int, str] = {}
    for ref in pool.chunks(pool.segments(include_kept=False), chunk_rows):
        h = pool.load(ref).hashes
        hit = np.flatnonzero(sorted_contains(hashes, h))
        for row, pid in zip(hit.tolist(), pool.ids(ref.segment, ref.start + hit), strict=True):
            out.setdefault(int(h[row]), pid)
    return list(out.values())
