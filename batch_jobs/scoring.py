"""One scoring function over chunks of posts; what survives a chunk is small and merges exactly.

`score_chunk` scores one chunk's eligible posts with the query's strategy and keeps only what
selection needs: the best `m` rows by (score, random tie-break key) with their features,
predicted class and confidence, plus whole-chunk counts (predicted-class histogram, score
sums). `Scored.merge` keeps the best `m` of two results, so any runner (this process, worker
processes, Ray actors) in any order ends with the same candidates, and memory depends on the
chunk size and `m`, never on the pool.

Randomness is per chunk (seeded with the night's seed and the chunk's own key), so the query
does not depend on how chunks are spread over workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from acquisition.scores import STRATEGIES
from acquisition.stochastic import perturb, sampling_keys, sampling_noise
from batch_jobs.config import QueryConfig
from model.classifier import Classifier, Predictions
from model.data import Views
from model.folded import FoldedClassifier, bf16_is_fast
from store.pool import ChunkRef, Pool, sorted_contains


@dataclass(frozen=True)
class Loaded:
    """A chunk ready to score: `views`, `eligible (k,)`, `hashes (k,)` uint64 (post identity),
    and where each row lives: `part` (a segment index, 0 in memory) and `rows (k,)` in it."""

    views: Views
    eligible: np.ndarray
    hashes: np.ndarray
    part: int
    rows: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)  # ineligible rows, by reason


class Source(Protocol):
    """Chunks of posts to score: small picklable refs, each loadable on any worker."""

    def refs(self) -> list[object]: ...

    def load(self, ref: object) -> Loaded: ...

    def key(self, ref: object) -> int: ...

    def load_rows(self, part: int, rows: np.ndarray) -> Views:
        """The views of `rows (k,)` of one part (a segment), read by locator."""
        ...


@dataclass
class Scored:
    """The best `m` rows by (score desc, key asc) and whole-pool counts. Columns `(k,)`."""

    part: np.ndarray  # int64
    rows: np.ndarray  # int64
    hashes: np.ndarray  # uint64
    scores: np.ndarray  # float64
    keys: np.ndarray  # float64 tie-break
    predicted: np.ndarray  # int64
    confidence: np.ndarray  # float32
    features: np.ndarray  # (k, F) float32
    histogram: np.ndarray  # (C,) int64 predicted classes of every scored row
    scored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    score_sum: float = 0.0
    score_min: float = float("inf")
    score_max: float = float("-inf")
    seconds: dict[str, float] = field(default_factory=dict)  # read, eligible, score (summed)

    @classmethod
    def empty(cls, n_classes: int) -> Scored:
        """No rows yet (0 features: `merge` takes the width from the first non-empty side)."""
        z = np.zeros(0, np.int64)
        return cls(
            z, z, np.zeros(0, np.uint64), np.zeros(0), np.zeros(0), z, np.zeros(0, np.float32),
            np.zeros((0, 0), np.float32), np.zeros(n_classes, np.int64),
        )  # fmt: skip

    def top(self, m: int) -> Scored:
        """The best `m` rows (all counts kept)."""
        order = np.lexsort((self.keys, -self.scores))[:m]
        return self._rows(order)

    def _rows(self, idx: np.ndarray) -> Scored:
        return Scored(
            self.part[idx], self.rows[idx], self.hashes[idx], self.scores[idx], self.keys[idx],
            self.predicted[idx], self.confidence[idx], self.features[idx], self.histogram,
            self.scored, self.skipped, self.score_sum, self.score_min, self.score_max,
            self.seconds,
        )  # fmt: skip

    def merge(self, other: Scored, m: int) -> Scored:
        """Both results' rows, best `m` kept; counts added."""

        sides = [s for s in (self, other) if s.rows.size] or [self]

        def cat(name: str) -> np.ndarray:  # an empty side may have another feature width
            return np.concatenate([getattr(s, name) for s in sides])

        skipped, seconds = dict(self.skipped), dict(self.seconds)
        for k, v in other.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        for k, t in other.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + t
        both = Scored(
            cat("part"), cat("rows"), cat("hashes"), cat("scores"), cat("keys"), cat("predicted"),
            cat("confidence"), cat("features"), self.histogram + other.histogram,
            self.scored + other.scored, skipped, self.score_sum + other.score_sum,
            min(self.score_min, other.score_min), max(self.score_max, other.score_max), seconds,
        )  # fmt: skip
        return both.top(m)

    def distinct(self) -> Scored:
        """One row per post (best kept): racing writers may have pooled a post twice."""
        _, first = np.unique(self.hashes, return_index=True)  # rows arrive best first
        return self._rows(np.sort(first))

    def summary(self) -> dict[str, float | int]:
        mean = self.score_sum / self.scored if self.scored else float("nan")
        return {"scored": self.scored, "min": self.score_min, "mean": mean, "max": self.score_max}


def usable_rows(clf: Classifier, views: Views) -> np.ndarray:
    """`(k,) bool`: rows with a view the model has a branch for."""
    cfg, n = clf.net_config, len(views)
    usable = np.zeros(n, dtype=bool)
    if cfg.image_dim and views.image_mask is not None:
        usable |= views.image_mask
    if cfg.text_dim and views.text_mask is not None:
        usable |= views.text_mask
    return usable


def chunk_rngs(seed: Sequence[int], key: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(score rng, tie-break rng) of one chunk: a function of the night's seed and the chunk."""
    base = np.random.default_rng([*seed, key & 0xFFFFFFFF, key >> 32])
    score_rng, tie_rng = base.spawn(2)
    return score_rng, tie_rng


def score_views(
    clf: Classifier, views: Views, cfg: QueryConfig, score_rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(scores (n,), probs (n, C), features (n, F))`; F = 0 without diversity."""
    strategy = STRATEGIES[cfg.strategy]
    need_features = cfg.diversity is not None
    pred = _predict(clf, views, need_features, strategy.needs_heads)
    if strategy.needs_mc:
        scores = strategy.score(clf.predict_mc(views, cfg.mc_samples, score_rng), score_rng)
    elif strategy.needs_heads:
        scores = strategy.score(pred.head_probs, score_rng)  # type: ignore[arg-type]
    else:
        scores = strategy.score(pred.probs, score_rng)
    scores = perturb(scores, strategy.floor, cfg.sampling, cfg.temperature, score_rng)
    feats = pred.features if pred.features is not None else np.empty((len(views), 0), np.float32)
    return scores, pred.probs, feats


def _predict(
    clf: Classifier,
    views: Views,
    with_features: bool,
    with_heads: bool,
    folded: FoldedClassifier | None = None,
) -> Predictions:
    """`clf.predict(views, with_features, with_heads)`; a trident without per-head outputs
    goes through `FoldedClassifier` (the served path, ~1.6x the module walk, README), `folded`
    when the caller has built it for this `clf`."""
    if clf.net_config.family != "trident" or with_heads:
        return clf.predict(views, with_features=with_features, with_heads=with_heads)
    if folded is None:
        folded = FoldedClassifier(clf)  # folded per call: `clf` may be fine-tuned in between
    if with_features:
        probs, head, feats = folded.predict_with_features(views)
        return Predictions(probs, head, feats)
    probs, head = folded.predict(views)
    return Predictions(probs, head)


def score_chunk(
    clf: Classifier,
    chunk: Loaded,
    cfg: QueryConfig,
    m: int,
    seed: Sequence[int],
    key: int,
    prefilter: str = "off",
    floor: float = -np.inf,
) -> Scored:
    """Score the chunk's eligible rows; keep the best `m` and the chunk's counts.

    `prefilter` (`EngineConfig.prefilter`): "bf16" or "auto" (bf16 where it is fast) scores
    the chunk in bfloat16 first and in float32 only the rows that can still be among the best
    `m` (`_score_prefiltered`); the rows kept are the float32 path's up to rounding.
    `floor`: a key the caller already has m rows at or above (other chunks'), so rows surely
    below it may be left out of this chunk's result; it only narrows the prefilter's float32
    rescoring."""
    skipped = dict(chunk.skipped)
    eligible = chunk.eligible & usable_rows(clf, chunk.views)
    skipped["no_usable_view"] = skipped.get("no_usable_view", 0) + int(
        (chunk.eligible & ~eligible).sum()
    )
    idx = np.flatnonzero(eligible)
    out = Scored.empty(len(clf.classes))
    out.skipped = skipped
    if not idx.size:
        return out
    score_rng, tie_rng = chunk_rngs(seed, key)
    rows = _Eligible(chunk, idx, skipped, score_rng, tie_rng)
    if not STRATEGIES[cfg.strategy].reads_model:
        return _model_free_keys(clf, rows, cfg, m)
    if _prefilters(clf, cfg, prefilter, idx.size, m):
        return _score_prefiltered(clf, rows, cfg, m, floor)
    scores, probs, feats = score_views(clf, chunk.views.take(idx), cfg, score_rng)
    keys = tie_rng.random(idx.size)
    return _scored(clf, chunk, idx, scores, keys, probs, feats, skipped).top(m)


@dataclass(frozen=True)
class _Eligible:
    """A chunk's eligible rows `idx (k,)`, its skip counts and its two random streams."""

    chunk: Loaded
    idx: np.ndarray
    skipped: dict[str, int]
    score_rng: np.random.Generator
    tie_rng: np.random.Generator


def _model_free_keys(clf: Classifier, rows: _Eligible, cfg: QueryConfig, m: int) -> Scored:
    """A score that ignores the model (random): the same draws as `score_views`, the best `m`
    rows kept with no model output yet (`predict_kept` adds it to the merged best m, so the
    model runs on m rows of the whole pool, whatever the runner). The histogram stays empty."""
    chunk, idx = rows.chunk, rows.idx
    strategy = STRATEGIES[cfg.strategy]
    shape_only = np.zeros((idx.size, len(clf.classes)), np.float32)  # (k, C)
    raw = strategy.score(shape_only, rows.score_rng)
    scores = perturb(raw, strategy.floor, cfg.sampling, cfg.temperature, rows.score_rng)  # (k,)
    keys = rows.tie_rng.random(idx.size)
    best = np.lexsort((keys, -scores))[:m]  # (m,) the rows `Scored.top` keeps
    kept = idx[best]
    return Scored(
        np.full(kept.size, chunk.part, np.int64), chunk.rows[kept], chunk.hashes[kept],
        np.asarray(scores[best], np.float64), keys[best], np.zeros(kept.size, np.int64),
        np.zeros(kept.size, np.float32), np.zeros((kept.size, 0), np.float32),
        np.zeros(len(clf.classes), np.int64), int(idx.size), rows.skipped,
        float(scores.sum()), float(scores.min()), float(scores.max()),
    )  # fmt: skip


def predict_kept(clf: Classifier, source: Source, kept: Scored, cfg: QueryConfig) -> Scored:
    """The model's outputs (class, confidence, features; histogram of these rows) for the
    merged best rows of a model-free score: their views are read by locator from `source`."""
    if not kept.rows.size:
        return kept
    parts = np.unique(kept.part)
    order = np.concatenate([np.flatnonzero(kept.part == p) for p in parts])  # grouped by part
    views = Views.concat([source.load_rows(int(p), kept.rows[kept.part == p]) for p in parts])
    pred = _predict(clf, views, cfg.diversity is not None, False)
    back = np.empty_like(order)
    back[order] = np.arange(order.size)  # kept row i sits at back[i] of `views`
    probs = pred.probs[back]
    predicted = probs.argmax(1)
    feats = np.zeros((kept.rows.size, 0), np.float32)
    if pred.features is not None and pred.features.shape[1]:
        feats = pred.features[back]
    out = kept._rows(np.arange(kept.rows.size))
    out.predicted = predicted.astype(np.int64)
    out.confidence = probs[np.arange(predicted.size), predicted].astype(np.float32)
    out.features = np.ascontiguousarray(feats, np.float32)
    out.histogram = np.bincount(predicted, minlength=len(clf.classes)).astype(np.int64)
    return out


PREFILTER_MIN_ROWS = 2048  # below this a chunk is scored in float32 alone
PREFILTER_CALIBRATION_ROWS = 256  # rows of each chunk scored both ways to bound the bf16 error
PREFILTER_SAFETY = 2.0  # the error bound used is this × the largest error on those rows
PREFILTER_BLOCK = 512  # rows rescored in float32 between two checks of the stopping rule


def _prefilters(clf: Classifier, cfg: QueryConfig, prefilter: str, n: int, m: int) -> bool:
    """Whether a chunk of `n` eligible rows keeping `m` gets the bf16 prefilter: the folded
    trident path with a score read from probabilities alone (margin, least confidence,
    entropy), a chunk big enough to pay for it, and bf16 asked for or fast here."""
    strategy = STRATEGIES[cfg.strategy]
    applies = (
        clf.net_config.family == "trident"
        and not (strategy.needs_mc or strategy.needs_heads)
        and n >= max(PREFILTER_MIN_ROWS, 4 * m)
    )
    return applies and (prefilter == "bf16" or (prefilter == "auto" and bf16_is_fast()))


def _score_prefiltered(
    clf: Classifier, eligible: _Eligible, cfg: QueryConfig, m: int, floor: float
) -> Scored:
    """A bf16 pass on every row, then float32 on rows in bf16 key order until no row left can
    be in the best `m`: the float32 path's picks, scores, probabilities and features, up to
    float32 rounding (BLAS may round a row's last bit differently in a small block than in the
    whole chunk, so rows tied within ~1e-7 at the m-th key can swap).

    The bf16 key error is bounded by δ = `PREFILTER_SAFETY` × its largest value on
    `PREFILTER_CALIBRATION_ROWS` evenly spaced rows scored both ways. Rescoring stops once
    the next row's bf16 key + δ is below T, the m-th best float32 key so far (or `floor`,
    when higher): every row left has a float32 key below T, and T is at most the true m-th best
    of this chunk (or of the chunks merged so far). Same draws as
    `score_views` (one noise value per row, tie keys for the whole chunk). Whole-chunk counts
    (predicted histogram, score sum/min/max) mix float32 values on the rescored rows with bf16
    values elsewhere; bf16 agrees on the predicted class for ~99.8% of rows (README)."""
    chunk, idx, skipped = eligible.chunk, eligible.idx, eligible.skipped
    score_rng, tie_rng = eligible.score_rng, eligible.tie_rng
    strategy = STRATEGIES[cfg.strategy]
    folded = FoldedClassifier(clf)  # folded per chunk: `clf` may be fine-tuned in between
    noise = sampling_noise(idx.size, cfg.sampling, score_rng)

    def keys(probs: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        scores = strategy.score(probs, score_rng)  # reads the probabilities only
        part = None if noise is None else noise[rows]
        return sampling_keys(scores, strategy.floor, cfg.sampling, cfg.temperature, part)

    coarse = folded.coarse()
    if usable_rows(clf, chunk.views).all():  # no copy: bf16 on a few ineligible rows is cheaper
        rough_probs = coarse.predict(chunk.views)[0][idx]
    else:
        rough_probs = coarse.predict(chunk.views.take(idx))[0]
    rough = keys(rough_probs, slice(None))
    calib = np.linspace(0, idx.size - 1, PREFILTER_CALIBRATION_ROWS).astype(np.int64)
    error = np.abs(rough[calib] - keys(folded.predict(chunk.views.take(idx[calib]))[0], calib))
    delta = PREFILTER_SAFETY * float(error.max()) if np.isfinite(error).all() else np.inf
    finite = np.isfinite(rough)
    by_rough = np.flatnonzero(finite)[np.argsort(-rough[finite], kind="stable")]
    order = np.concatenate([np.flatnonzero(~finite), by_rough])  # non-finite: float32 decides
    done, blocks = 0, []
    size = int((~finite).sum()) + PREFILTER_BLOCK
    while done < order.size:
        rows = order[done : done + size]
        pred = _predict(clf, chunk.views.take(idx[rows]), cfg.diversity is not None, False, folded)
        blocks.append((rows, keys(pred.probs, rows), pred))
        done, size = done + rows.size, PREFILTER_BLOCK
        best = np.concatenate([k for _, k, _ in blocks])
        if done < order.size and rough[order[done]] + delta < max(mth_best(best, m), floor):
            break
    again = np.concatenate([r for r, _, _ in blocks])
    probs = np.concatenate([p.probs for _, _, p in blocks])
    width = 0 if blocks[0][2].features is None else blocks[0][2].features.shape[1]
    feats = (
        np.concatenate([p.features for _, _, p in blocks])
        if width
        else np.empty((again.size, 0), np.float32)
    )
    tie = tie_rng.random(idx.size)
    out = _scored(clf, chunk, idx[again], best, tie[again], probs, feats, skipped)
    rough[again] = best
    predicted = rough_probs.argmax(1)
    predicted[again] = out.predicted
    out.histogram = np.bincount(predicted, minlength=len(clf.classes)).astype(np.int64)
    out.scored = int(idx.size)
    out.score_sum, out.score_min, out.score_max = (
        float(rough.sum()), float(rough.min()), float(rough.max()),
    )  # fmt: skip
    return out.top(m)


def mth_best(keys: np.ndarray, m: int) -> float:
    """The m-th best finite key (-inf when fewer than m): `Scored.top` ranks NaN last."""
    finite = keys[np.isfinite(keys)]
    return float(np.partition(finite, -m)[-m]) if finite.size >= m else -np.inf


def _scored(
    clf: Classifier,
    chunk: Loaded,
    idx: np.ndarray,
    scores: np.ndarray,
    keys: np.ndarray,
    probs: np.ndarray,
    feats: np.ndarray,
    skipped: dict[str, int],
) -> Scored:
    """Columns of the chunk's rows `idx (k,)` from their scores, keys and probs `(k, C)`."""
    predicted = probs.argmax(1)
    return Scored(
        np.full(idx.size, chunk.part, np.int64), chunk.rows[idx], chunk.hashes[idx],
        np.asarray(scores, np.float64), keys, predicted.astype(np.int64),
        probs[np.arange(idx.size), predicted].astype(np.float32),
        np.ascontiguousarray(feats, np.float32),
        np.bincount(predicted, minlength=len(clf.classes)).astype(np.int64),
        int(idx.size), skipped, float(scores.sum()), float(scores.min()), float(scores.max()),
    )  # fmt: skip


# -- sources ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryRef:
    start: int
    stop: int


@dataclass
class MemorySource:
    """Rows of in-memory views (the simulator's pool): row locators are global row indices."""

    views: Views
    eligible: np.ndarray  # (n,) bool
    chunk_rows: int = 16_384

    def refs(self) -> list[object]:
        n = len(self.views)
        return [MemoryRef(a, min(a + self.chunk_rows, n)) for a in range(0, n, self.chunk_rows)]

    def load(self, ref: object) -> Loaded:
        assert isinstance(ref, MemoryRef)
        rows = np.arange(ref.start, ref.stop, dtype=np.int64)
        elig = self.eligible[ref.start : ref.stop]
        return Loaded(
            self.views.take(slice(ref.start, ref.stop)), elig, rows.astype(np.uint64), 0, rows,
            {"labeled_or_queried": int((~elig).sum())},
        )  # fmt: skip

    def key(self, ref: object) -> int:
        assert isinstance(ref, MemoryRef)
        return ref.start

    def load_rows(self, part: int, rows: np.ndarray) -> Views:
        return self.views.take(rows)


@dataclass
class PoolSource:
    """Chunks of pool segments, read from `root` (storage every worker reads).

    `excluded (e,)` sorted uint64 hashes of labeled and open-query posts; `since_ns`: rows that
    arrived earlier are outside the scoring window. Picklable: the pool is reopened per process.
    """

    root: Path
    segments: list[str]  # part index -> segment path
    chunk_refs: list[ChunkRef]
    excluded: np.ndarray
    since_ns: int | None = None
    _pool: Pool | None = field(default=None, repr=False)
    _parts: dict[str, int] | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_pool": None}

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self.root)
        return self._pool

    def refs(self) -> list[object]:
        return list(self.chunk_refs)

    def part_of(self, segment: str) -> int:
        if self._parts is None:
            self._parts = {s: i for i, s in enumerate(self.segments)}
        return self._parts[segment]

    def load(self, ref: object) -> Loaded:
        assert isinstance(ref, ChunkRef)
        chunk = self.pool.load(ref)
        fresh = ~sorted_contains(self.excluded, chunk.hashes)
        window = (
            chunk.arrived_ns >= self.since_ns
            if self.since_ns is not None
            else np.ones(len(fresh), bool)
        )
        return Loaded(
            chunk.views,
            fresh & window,
            chunk.hashes,
            self.part_of(ref.segment),
            np.arange(ref.start, ref.stop, dtype=np.int64),
            {
                "labeled_or_queried": int((~fresh).sum()),
                "outside_window": int((fresh & ~window).sum()),
            },
        )

    def load_rows(self, part: int, rows: np.ndarray) -> Views:
        return self.pool.rows(self.segments[part], rows)

    def key(self, ref: object) -> int:
        assert isinstance(ref, ChunkRef)
        digest = hashlib.blake2b(f"{ref.segment}:{ref.start}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")
