"""Streaming scoring: the best-m merge chooses exactly what selection on the whole in-memory
pool chooses (every strategy, diversity and balance), whatever the runner or worker count."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from acquisition.scores import STRATEGIES
from acquisition.selection import select_query
from batch_jobs import scoring
from batch_jobs.active_step import STAGE_STREAM, propose
from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.nightly import run_nightly
from batch_jobs.scoring import PREFILTER_MIN_ROWS, MemorySource, Scored, score_chunk
from model.data import Views
from postclf_errors import InvalidInputError

SEED = (7, 739_000)
CHUNK = 97  # several chunks, none aligned with anything


@pytest.fixture(scope="module")
def pool_views(small_npz) -> Views:
    return Views.from_nan_rows(small_npz["image"], small_npz["text"])


def whole_pool_selection(clf, source: MemorySource, cfg: QueryConfig) -> tuple[list, list]:
    """The in-memory path: every eligible row's score, key and features, then `select_query`
    on the full arrays with the same per-chunk randomness."""
    parts = [
        score_chunk(clf, source.load(ref), cfg, 1 << 30, SEED, source.key(ref))
        for ref in source.refs()
    ]
    allrows = Scored.empty(len(clf.classes))
    for p in parts:
        allrows = allrows.merge(p, 1 << 30)
    s = allrows  # nothing was dropped: m is larger than the pool
    if not STRATEGIES[cfg.strategy].reads_model:  # the model runs on the kept rows last
        s = scoring.predict_kept(clf, source, s, cfg)
    order = np.argsort(s.rows)  # back to pool order: nothing was dropped
    rows, scores, keys = s.rows[order], s.scores[order], s.keys[order]
    feats, pred = s.features[order], s.predicted[order]
    q = min(cfg.query_size, len(rows))
    sel = select_query(
        scores, feats if feats.shape[1] else np.zeros((len(rows), 0), np.float32), pred, q,
        np.random.default_rng([*SEED, STAGE_STREAM]), candidate_factor=cfg.candidate_factor,
        diversity=cfg.diversity, balance=cfg.balance, n_classes=len(clf.classes),
        tie_keys=keys,
    )  # fmt: skip
    return rows[sel.indices].tolist(), sel.reasons.tolist()


CASES = [
    (strategy, diversity, balance)
    for strategy in sorted(STRATEGIES)
    for diversity, balance in ((None, False), ("kmeans", True), ("kcenter", False))
] + [("margin", None, True), ("margin", "kmeans", False)]


@pytest.mark.parametrize(("strategy", "diversity", "balance"), CASES)
def test_streaming_chooses_what_the_whole_pool_chooses(
    tiny_model, pool_views, strategy, diversity, balance
):
    rng = np.random.default_rng(3)
    eligible = rng.random(len(pool_views)) < 0.8
    cfg = QueryConfig(strategy, 15, 6, diversity, balance, mc_samples=5)
    source = MemorySource(pool_views, eligible, CHUNK)
    got = propose(tiny_model, None, source, cfg, EngineConfig(), SEED)
    want_rows, want_reasons = whole_pool_selection(tiny_model, source, cfg)
    assert got.indices.tolist() == want_rows
    assert got.reasons.tolist() == want_reasons
    assert eligible[got.indices].all() and len(set(got.indices.tolist())) == 15
    assert got.counts["scored"] == int(eligible.sum())


@pytest.mark.parametrize(
    ("strategy", "sampling"), [("margin", "power"), ("kl_committee", "softmax")]
)
def test_stochastic_batches_stream_exactly_and_differ_from_top_k(
    tiny_model, pool_views, strategy, sampling
):
    eligible = np.ones(len(pool_views), bool)
    cfg = QueryConfig(strategy, 15, 6, "kmeans", True, sampling=sampling, temperature=0.5)
    source = MemorySource(pool_views, eligible, CHUNK)
    got = propose(tiny_model, None, source, cfg, EngineConfig(), SEED)
    assert got.indices.tolist() == whole_pool_selection(tiny_model, source, cfg)[0]
    top = propose(tiny_model, None, source, replace(cfg, sampling="top"), EngineConfig(), SEED)
    assert set(got.indices.tolist()) != set(top.indices.tolist())


def test_query_config_rejects_bad_sampling():
    with pytest.raises(InvalidInputError, match="sampling"):
        QueryConfig(sampling="sometimes")
    with pytest.raises(InvalidInputError, match="temperature"):
        QueryConfig(sampling="power", temperature=-1.0)


def test_counts_cover_the_whole_pool(tiny_model, pool_views):
    eligible = np.ones(len(pool_views), bool)
    eligible[:100] = False
    source = MemorySource(pool_views, eligible, CHUNK)
    got = propose(tiny_model, None, source, QueryConfig(), EngineConfig(), SEED)
    assert got.counts["scored"] == len(pool_views) - 100
    assert got.counts["skipped"]["labeled_or_queried"] == 100
    assert sum(got.counts["predicted_histogram"].values()) == len(pool_views) - 100
    summary = got.counts["score_summary"]
    assert summary["min"] <= summary["mean"] <= summary["max"] <= 0.0  # margin scores


def test_fewer_eligible_than_the_query_gives_them_all(tiny_model, pool_views):
    eligible = np.zeros(len(pool_views), bool)
    eligible[[3, 500, 800]] = True
    source = MemorySource(pool_views, eligible, CHUNK)
    cfg = QueryConfig(query_size=20, diversity="kmeans", balance=True)
    got = propose(tiny_model, None, source, cfg, EngineConfig(), SEED)
    assert sorted(got.indices.tolist()) == [3, 500, 800]


def test_the_query_does_not_depend_on_the_runner(paths, job_cfg):
    """Nightly dry runs on the real pool: this process, two worker processes, the same query."""
    cfg = replace(job_cfg, engine=EngineConfig(chunk_rows=128))
    one = run_nightly(paths, cfg, dry_run=True)
    two = run_nightly(paths, replace(cfg, engine=replace(cfg.engine, workers=2)), dry_run=True)
    assert one.status == two.status == "dry_run" and len(one.post_ids) == 20
    assert one.post_ids == two.post_ids
    assert one.eligible == two.eligible == 216


def test_sorted_contains_matches_isin():
    from store.pool import sorted_contains

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, 500, dtype=np.uint64))
    values = np.concatenate([keys[::7], rng.integers(0, 2**63, 300, dtype=np.uint64)])
    np.testing.assert_array_equal(sorted_contains(keys, values), np.isin(values, keys))
    assert not sorted_contains(np.zeros(0, np.uint64), values).any()


def _random_reads_the_model(monkeypatch) -> None:
    """`random` as if it read the model: every chunk's best m get the model's outputs there."""
    strategies = dict(STRATEGIES) | {"random": replace(STRATEGIES["random"], reads_model=True)}
    monkeypatch.setattr("batch_jobs.scoring.STRATEGIES", strategies)
    monkeypatch.setattr("batch_jobs.runners.STRATEGIES", strategies)


def test_a_model_free_chunk_keeps_the_same_rows_without_running_the_model(
    tiny_model, pool_views, monkeypatch
):
    eligible = np.random.default_rng(5).random(len(pool_views)) < 0.7
    source = MemorySource(pool_views, eligible, CHUNK)
    cfg = QueryConfig("random", 15, 6, "kmeans", True, sampling="power", temperature=0.5)
    ref = source.refs()[1]

    def chunk_result() -> Scored:
        return score_chunk(tiny_model, source.load(ref), cfg, 9, SEED, source.key(ref))

    monkeypatch.setattr(scoring, "_predict", lambda *a, **k: pytest.fail("the model ran"))
    fast = chunk_result()
    monkeypatch.undo()
    _random_reads_the_model(monkeypatch)
    full = chunk_result()
    assert fast.rows.tolist() == full.rows.tolist()
    assert np.array_equal(fast.scores, full.scores) and np.array_equal(fast.keys, full.keys)
    assert (fast.scored, fast.score_sum, fast.score_max) == (
        full.scored, full.score_sum, full.score_max
    )  # fmt: skip
    assert fast.histogram.sum() == 0 and fast.features.shape == (9, 0)


@pytest.mark.parametrize("chunk_rows", [CHUNK, 10_000])
def test_a_model_free_score_runs_the_model_on_the_merged_best_m_only(
    tiny_model, pool_views, monkeypatch, chunk_rows
):
    """The cold start's uniform sample (m rows of N) runs the model on those m rows, not on
    the best m of every chunk (all N when m >= a chunk), and picks what the model-reading path
    picks, with the same predictions and features."""
    eligible = np.random.default_rng(3).random(len(pool_views)) < 0.8
    source = MemorySource(pool_views, eligible, chunk_rows)
    cfg = QueryConfig("random", 10, 3, "kmeans", True)  # m = 30
    predicted: list[int] = []
    real = scoring._predict
    monkeypatch.setattr(
        scoring,
        "_predict",
        lambda clf, v, *a, **k: predicted.append(len(v)) or real(clf, v, *a, **k),
    )
    fast = propose(tiny_model, None, source, cfg, EngineConfig(), SEED)
    assert sum(predicted) == 30
    _random_reads_the_model(monkeypatch)
    full = propose(tiny_model, None, source, cfg, EngineConfig(), SEED)
    assert fast.indices.tolist() == full.indices.tolist()
    assert fast.reasons.tolist() == full.reasons.tolist()
    assert fast.predicted.tolist() == full.predicted.tolist()
    np.testing.assert_allclose(fast.confidence, full.confidence, rtol=1e-5)
    assert sum(fast.counts["predicted_histogram"].values()) == 30


def test_predict_kept_matches_rows_across_parts(tiny_model, pool_views):
    """Kept rows from several parts (segments), interleaved: each gets its own row's outputs."""

    class TwoParts(MemorySource):  # part p holds rows [p·half, (p+1)·half) of the views
        def load_rows(self, part: int, rows: np.ndarray) -> Views:
            return self.views.take(rows + part * half)

    half = len(pool_views) // 2
    source = TwoParts(pool_views, np.ones(len(pool_views), bool), CHUNK)
    kept = Scored.empty(len(tiny_model.classes))
    kept.part = np.array([1, 0, 1, 0, 0, 1], np.int64)
    kept.rows = np.array([5, 9, 0, 3, 300, 17], np.int64)
    for name in ("hashes", "scores", "keys", "predicted", "confidence"):
        setattr(kept, name, np.zeros(6, getattr(kept, name).dtype))
    kept.features = np.zeros((6, 0), np.float32)  # as a model-free chunk leaves them
    cfg = QueryConfig("random", 2, 3, "kmeans")
    got = scoring.predict_kept(tiny_model, source, kept, cfg)
    want = tiny_model.predict(
        pool_views.take(kept.rows + kept.part * half), with_features=True
    )  # fmt: skip
    assert got.predicted.tolist() == want.probs.argmax(1).tolist()
    np.testing.assert_allclose(got.features, want.features, rtol=1e-4, atol=1e-5)
    assert got.rows.tolist() == kept.rows.tolist() and got.histogram.sum() == 6


def test_a_model_free_score_reads_pool_rows_by_locator(paths, job_cfg):
    """The nightly's random control on the real pool: the same query from this process and
    from two worker processes (whose chunks return no model output)."""
    query = replace(job_cfg.query, strategy="random", diversity="kmeans", cold_start_labels=0)
    cfg = replace(job_cfg, query=query, engine=EngineConfig(chunk_rows=128))
    one = run_nightly(paths, cfg, dry_run=True)
    two = run_nightly(paths, replace(cfg, engine=replace(cfg.engine, workers=2)), dry_run=True)
    assert one.status == two.status == "dry_run" and len(one.post_ids) == 20
    assert one.post_ids == two.post_ids
    assert one.predicted_histogram == two.predicted_histogram


@pytest.fixture(scope="module")
def big_chunk(small_npz) -> Views:
    """Reviews rows tiled with a little noise to one chunk above the prefilter's minimum, with
    three rows that overflow float32 (no bf16 error bound holds for them)."""
    rng = np.random.default_rng(11)
    reps = -(-5 * PREFILTER_MIN_ROWS // len(small_npz["label"]))  # 3 chunks of 3,400 in one test

    def tiled(x: np.ndarray) -> np.ndarray:
        big = np.tile(x, (reps, 1))
        return big + rng.normal(0, 0.05, big.shape).astype(np.float32)  # NaN rows stay NaN

    image, text = tiled(small_npz["image"]), tiled(small_npz["text"])
    image[[5, 700, 2900]] = 1e30
    return Views.from_nan_rows(image, text)


@pytest.mark.parametrize(
    ("strategy", "sampling", "diversity"),
    [("margin", "top", None), ("margin", "power", "kmeans"), ("entropy", "top", "kmeans"),
     ("least_confidence", "softmax", None)],
)  # fmt: skip
def test_the_bf16_prefilter_keeps_the_float32_rows(
    tiny_model, big_chunk, strategy, sampling, diversity, monkeypatch
):
    """Same rows, keys, probabilities and features as float32 alone, and far fewer rows
    rescored in float32 than the chunk holds."""
    eligible = np.random.default_rng(4).random(len(big_chunk)) < 0.9
    source = MemorySource(big_chunk, eligible, len(big_chunk))
    ref = source.refs()[0]
    cfg = QueryConfig(strategy, 30, 4, diversity, False, sampling=sampling, temperature=0.5)
    m = 120

    def chunk_result(prefilter: str) -> Scored:
        return score_chunk(tiny_model, source.load(ref), cfg, m, SEED, source.key(ref), prefilter)

    exact = chunk_result("off")
    rescored = []
    real = scoring._predict
    monkeypatch.setattr(
        scoring, "_predict", lambda clf, v, *a: rescored.append(len(v)) or real(clf, v, *a)
    )
    fast = chunk_result("bf16")
    assert_same_best(fast.rows, fast.scores, exact.rows, exact.scores)
    common, i, j = np.intersect1d(fast.rows, exact.rows, return_indices=True)
    assert common.size >= m - 2  # rows present in both: the same tie keys, classes, features
    assert np.array_equal(fast.keys[i], exact.keys[j])
    assert np.array_equal(fast.predicted[i], exact.predicted[j])
    np.testing.assert_allclose(fast.features[i], exact.features[j], rtol=1e-4, atol=1e-5)
    assert fast.scored == exact.scored == int(eligible.sum())
    assert fast.histogram.sum() == exact.histogram.sum()
    assert m <= sum(rescored) < 0.6 * fast.scored, rescored


def test_the_prefilter_applies_to_probability_scores_of_big_chunks_only(tiny_model):
    def applies(strategy: str, n: int, m: int = 100) -> bool:
        return scoring._prefilters(tiny_model, QueryConfig(strategy), "bf16", n, m)

    assert applies("margin", PREFILTER_MIN_ROWS) and applies("entropy", 10_000)
    assert not applies("margin", PREFILTER_MIN_ROWS - 1)
    assert not applies("margin", 3000, m=1000)  # most rows would be rescored anyway
    assert not applies("bald", 10_000) and not applies("kl_committee", 10_000)
    assert not scoring._prefilters(tiny_model, QueryConfig(), "off", 10_000, 100)


def test_a_prefiltered_query_over_chunks_is_the_float32_query(tiny_model, big_chunk):
    """Three chunks: later ones rescore only what can beat the merged best m so far."""
    eligible = np.random.default_rng(8).random(len(big_chunk)) < 0.9
    source = MemorySource(big_chunk, eligible, -(-len(big_chunk) // 3))
    cfg = QueryConfig("margin", 30, diversity=None, balance=False)
    got = propose(tiny_model, None, source, cfg, EngineConfig(prefilter="bf16"), SEED)
    want = propose(tiny_model, None, source, cfg, EngineConfig(prefilter="off"), SEED)
    assert_same_best(got.indices, got.scores, want.indices, want.scores)
    assert got.counts["scored"] == want.counts["scored"] == int(eligible.sum())


def assert_same_best(rows, keys, want_rows, want_keys, tol: float = 1e-6) -> None:
    """The same best rows and keys up to float32 rounding: a block rescored in float32 may
    round a row's last bit unlike the whole chunk's product (BLAS picks kernels by size), so
    rows may differ only where keys tie within `tol` at the boundary (the last kept key)."""
    np.testing.assert_allclose(np.sort(keys), np.sort(want_keys), rtol=0, atol=tol)
    boundary = float(np.min(want_keys))
    key_of = dict(zip(np.asarray(rows).tolist(), keys, strict=True))
    key_of |= dict(zip(np.asarray(want_rows).tolist(), want_keys, strict=True))
    flipped = set(np.asarray(rows).tolist()) ^ set(np.asarray(want_rows).tolist())
    assert all(abs(key_of[r] - boundary) <= tol for r in flipped), flipped


def test_a_floor_leaves_out_only_rows_below_it(tiny_model, big_chunk):
    source = MemorySource(big_chunk, np.ones(len(big_chunk), bool), len(big_chunk))
    ref, cfg, m = source.refs()[0], QueryConfig("margin", 30, diversity=None), 200
    exact = score_chunk(tiny_model, source.load(ref), cfg, m, SEED, source.key(ref), "off")
    floor = float(exact.scores[m // 2])
    fast = score_chunk(tiny_model, source.load(ref), cfg, m, SEED, source.key(ref), "bf16", floor)
    above = exact.scores >= floor
    k = int(above.sum())
    assert_same_best(fast.rows[:k], fast.scores[:k], exact.rows[:k], exact.scores[:k])
