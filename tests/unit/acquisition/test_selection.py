"""Batch selection: every strategy × every stage combination obeys the same contract."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from acquisition.balance import class_cap
from acquisition.diversity import kcenter_labels, normalise
from acquisition.scores import STRATEGIES
from acquisition.selection import select_query
from postclf_errors import InvalidInputError

N, F, C, T, Q = 240, 16, 5, 4, 12
COMBOS = list(itertools.product([None, "kmeans", "kcenter"], [False, True]))


@pytest.fixture(scope="module")
def pool() -> dict[str, np.ndarray]:
    """A synthetic pool: MC probabilities, their mean, features with cluster structure."""
    rng = np.random.default_rng(7)
    mc = rng.dirichlet(np.full(C, 0.4), size=(N, T))  # (N, T, C)
    centers = rng.normal(size=(8, F))
    feats = centers[rng.integers(0, 8, N)] + 0.1 * rng.normal(size=(N, F))  # (N, F)
    probs = mc.mean(axis=1)
    return {
        "mc": mc,
        "heads": mc[:, :3],  # (N, 3, C) read as the three heads' probabilities
        "probs": probs,
        "features": feats.astype(np.float32),
        "predicted": probs.argmax(1),
    }


def _scores(pool: dict[str, np.ndarray], name: str, seed: int = 0) -> np.ndarray:
    strategy = STRATEGIES[name]
    arr = (
        pool["mc"]
        if strategy.needs_mc
        else pool["heads"]
        if strategy.needs_heads
        else pool["probs"]
    )
    return STRATEGIES[name].score(arr, np.random.default_rng(seed))


def _select(pool, scores, seed: int, diversity, balance, **kw):
    return select_query(
        scores,
        pool["features"],
        pool["predicted"],
        kw.pop("q", Q),
        np.random.default_rng(seed),
        diversity=diversity,
        balance=balance,
        n_classes=C,
        **kw,
    )


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize(("diversity", "balance"), COMBOS)
def test_contract_for_every_strategy_and_stage(pool, name, diversity, balance) -> None:
    scores = _scores(pool, name)
    eligible = np.random.default_rng(3).random(N) < 0.6
    sel = _select(pool, scores, 11, diversity, balance, eligible=eligible)
    again = _select(pool, scores, 11, diversity, balance, eligible=eligible)
    assert sel.indices.dtype == np.int64 and sel.indices.shape == (Q,)
    assert np.unique(sel.indices).shape == (Q,)
    assert eligible[sel.indices].all()
    assert np.array_equal(sel.indices, again.indices)  # same seed, same query
    assert np.array_equal(sel.reasons, again.reasons) and sel.reasons.shape == (Q,)
    assert (np.diff(scores[sel.indices]) <= 0).all()  # best first by score
    with pytest.raises(InvalidInputError) as err:
        _select(pool, scores, 11, diversity, balance, eligible=np.arange(N) < Q - 1)
    assert err.value.field == "q"


@pytest.mark.parametrize(("diversity", "balance"), COMBOS)
def test_fewer_rows_than_q_is_a_clear_error(pool, diversity, balance) -> None:
    with pytest.raises(InvalidInputError, match="q=20") as err:
        select_query(
            np.zeros(5),
            np.zeros((5, F)),
            np.zeros(5, int),
            20,
            np.random.default_rng(0),
            diversity=diversity,
            balance=balance,
        )
    assert err.value.field == "q"


@pytest.mark.parametrize(("diversity", "balance"), COMBOS)
def test_exactly_q_rows_are_all_taken(pool, diversity, balance) -> None:
    rows = np.arange(Q)
    sel = select_query(
        pool["probs"][rows, 0],
        pool["features"][rows],
        pool["predicted"][rows],
        Q,
        np.random.default_rng(0),
        diversity=diversity,
        balance=balance,
    )
    assert set(sel.indices.tolist()) == set(rows.tolist())


def test_plain_top_k_takes_the_highest_scores(pool) -> None:
    scores = _scores(pool, "margin")
    sel = _select(pool, scores, 0, None, False)
    assert np.array_equal(sel.indices, np.argsort(-scores, kind="stable")[:Q])
    assert (sel.reasons == "top-score").all()


def test_ties_are_broken_at_random_but_reproducibly() -> None:
    scores = np.zeros(100)  # every row ties
    feats, pred = np.zeros((100, 2)), np.zeros(100, int)
    picks = {
        tuple(select_query(scores, feats, pred, 5, np.random.default_rng(s)).indices)
        for s in range(5)
    }
    assert len(picks) > 1  # not always the first rows
    a = select_query(scores, feats, pred, 5, np.random.default_rng(9)).indices
    assert np.array_equal(a, select_query(scores, feats, pred, 5, np.random.default_rng(9)).indices)


def test_ties_at_the_candidate_boundary_are_kept_in_score_order() -> None:
    scores = np.array([5.0, 1.0, 1.0, 1.0, 1.0, 0.0, 3.0])
    sel = select_query(scores, np.zeros((7, 1)), np.zeros(7, int), 3, np.random.default_rng(0))
    assert sel.indices[:2].tolist() == [0, 6] and scores[sel.indices[2]] == 1.0


def test_balance_caps_each_predicted_class(pool) -> None:
    scores = np.linspace(1, 0, N)
    predicted = np.where(np.arange(N) < N // 2, 0, np.arange(N) % C)  # class 0 on top
    sel = select_query(
        scores,
        pool["features"],
        predicted,
        10,
        np.random.default_rng(0),
        balance=True,
        candidate_factor=N // 10,
    )
    counts = np.bincount(predicted[sel.indices], minlength=C)
    assert counts.max() <= class_cap(10, C) == 2
    assert counts.sum() == 10
    assert set(sel.reasons) <= {"top-score", "balance:fill"}
    assert (sel.reasons[predicted[sel.indices] != 0] == "balance:fill").all()


def test_balance_fills_by_score_when_too_few_classes(pool) -> None:
    scores = np.linspace(1, 0, N)
    predicted = np.zeros(N, int)  # one class only: the cap is q, nothing to balance
    sel = select_query(
        scores, pool["features"], predicted, Q, np.random.default_rng(0), balance=True
    )
    assert np.array_equal(sel.indices, np.arange(Q))


def test_kmeans_keeps_one_row_per_cluster(pool) -> None:
    """Eight tight clusters, q=8: k-means finds them and keeps the best-scored of each."""
    rng = np.random.default_rng(1)
    centers = np.eye(F)[:8] * 10
    labels = np.repeat(np.arange(8), 30)
    feats = (centers[labels] + 0.01 * rng.normal(size=(240, F))).astype(np.float32)
    scores = rng.random(240)
    for method in ("kmeans", "kcenter"):
        sel = select_query(
            scores,
            feats,
            np.zeros(240, int),
            8,
            np.random.default_rng(2),
            diversity=method,
            candidate_factor=30,
        )
        assert sorted(labels[sel.indices].tolist()) == list(range(8))
        best = [int(np.flatnonzero(labels == k)[np.argmax(scores[labels == k])]) for k in range(8)]
        assert set(sel.indices.tolist()) == set(best)
        assert (sel.reasons == f"diversity:{method} cluster best").all()


def test_kcenter_starts_at_the_best_row_and_spreads_out() -> None:
    x = normalise(np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0]], np.float32))
    labels = kcenter_labels(x, 3)
    assert labels[0] == labels[1] and len(set(labels.tolist())) == 3


def test_diversity_with_duplicate_rows_fills_by_score() -> None:
    """All candidates identical: one real cluster; the rest of the query is filled by score."""
    scores = np.linspace(1, 0, 50)
    feats = np.ones((50, 4), np.float32)
    for method in ("kmeans", "kcenter"):
        sel = select_query(
            scores, feats, np.zeros(50, int), 5, np.random.default_rng(0), diversity=method
        )
        assert np.array_equal(sel.indices, np.arange(5))
        assert sel.reasons[0] == f"diversity:{method} cluster best"
        assert (sel.reasons[1:] == "diversity:fill").all()


def test_shape_mismatches_raise_value_error(pool) -> None:
    s, f, p = _scores(pool, "margin"), pool["features"], pool["predicted"]
    rng = np.random.default_rng(0)
    for args in ((s[:-1], f, p), (s, f[:-1], p), (s, f, p[:-1]), (s[:, None], f, p)):
        with pytest.raises(ValueError):
            select_query(*args, Q, rng)
    with pytest.raises(ValueError, match="eligible"):
        select_query(s, f, p, Q, rng, eligible=np.ones(N - 1, bool))
    with pytest.raises(ValueError, match="diversity"):
        select_query(s, f, p, Q, rng, diversity="dbscan")
    with pytest.raises(ValueError, match="features"):
        select_query(s, f[:, :0], p, Q, rng, diversity="kmeans")
    with pytest.raises(InvalidInputError, match="NaN"):
        select_query(np.full(N, np.nan), f, p, Q, rng)
    s_nan = np.where(np.arange(N) < Q, 1.0, np.nan)  # only ineligible rows are NaN: fine
    sel = select_query(s_nan, f, p, Q, rng, eligible=np.arange(N) < Q)
    assert set(sel.indices.tolist()) == set(range(Q))
    with pytest.raises(InvalidInputError):
        select_query(s, f, p, 0, rng)
