"""Uncertainty scores: known answers, the shape contract, and Hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from acquisition.scores import STRATEGIES, bald, entropy, least_confidence, margin
from postclf_errors import InvalidInputError

RNG = np.random.default_rng(0)


def _three_d(name: str) -> bool:
    return STRATEGIES[name].needs_mc or STRATEGIES[name].needs_heads


def _input_for(name: str, probs_3d: np.ndarray) -> np.ndarray:
    """MC strategies take `(n, T, C)`, committee ones `(n, K, C)` (the same array read as K
    heads); the others the mean over the middle axis, `(n, C)`."""
    return probs_3d if _three_d(name) else probs_3d.mean(axis=1)


def test_registry_names_and_mc_flags() -> None:
    assert set(STRATEGIES) == {
        "random", "least_confidence", "margin", "entropy", "bald",
        "vote_entropy", "kl_committee", "fused_conflict", "margin_committee",
    }  # fmt: skip
    assert [n for n, s in STRATEGIES.items() if s.needs_mc] == ["bald"]
    assert [n for n, s in STRATEGIES.items() if s.needs_heads] == [
        "vote_entropy", "kl_committee", "fused_conflict", "margin_committee"
    ]  # fmt: skip
    assert not any(s.needs_mc and s.needs_heads for s in STRATEGIES.values())
    assert all(s.name == n for n, s in STRATEGIES.items())


def test_margin_ranks_close_top_two_first() -> None:
    p = np.array([[0.5, 0.49, 0.01], [0.49, 0.255, 0.255]])
    s = margin(p, RNG)
    assert s[0] > s[1]
    assert np.allclose(s, [-0.01, -0.235])


def test_margin_ignores_column_order() -> None:
    p = np.array([[0.01, 0.49, 0.5], [0.255, 0.49, 0.255]])
    assert np.allclose(margin(p, RNG), [-0.01, -0.235])


def test_least_confidence_known_values() -> None:
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    assert np.allclose(least_confidence(p, RNG), [0.1, 0.5, 0.2])


def test_entropy_is_largest_at_uniform_and_zero_when_certain() -> None:
    c = 4
    uniform = np.full((1, c), 1 / c)
    skewed = np.array([[0.7, 0.1, 0.1, 0.1]])
    certain = np.array([[1.0, 0.0, 0.0, 0.0]])
    h = entropy(np.concatenate([uniform, skewed, certain]), RNG)
    assert np.isclose(h[0], np.log(c))
    assert h[0] > h[1] > h[2] and np.isclose(h[2], 0.0)


def test_bald_is_zero_when_all_samples_agree() -> None:
    p = RNG.dirichlet(np.ones(5), size=7)  # (7, 5)
    mc = np.repeat(p[:, None, :], 10, axis=1)  # (7, 10, 5) all samples identical
    assert np.allclose(bald(mc, RNG), 0.0, atol=1e-12)


def test_bald_is_high_when_confident_samples_disagree() -> None:
    agree = np.tile([[0.5, 0.5]], (4, 1))[None]  # uncertain, but every sample says so
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    s = bald(np.concatenate([agree, disagree]), RNG)
    assert np.isclose(s[0], 0.0) and np.isclose(s[1], np.log(2))


def test_random_depends_only_on_rng() -> None:
    p = RNG.dirichlet(np.ones(3), size=20)
    a = STRATEGIES["random"].score(p, np.random.default_rng(5))
    b = STRATEGIES["random"].score(p[::-1], np.random.default_rng(5))
    assert np.array_equal(a, b) and np.unique(a).shape[0] == 20


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_wrong_rank_is_rejected(name: str) -> None:
    wrong = np.full((4, 3), 1 / 3) if _three_d(name) else np.full((4, 2, 3), 1 / 3)
    with pytest.raises(InvalidInputError):
        STRATEGIES[name].score(wrong, RNG)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_non_finite_is_rejected(name: str) -> None:
    arr = _input_for(name, np.full((4, 2, 3), 1 / 3))
    arr[1, ...] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        STRATEGIES[name].score(arr, RNG)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_empty_pool_gives_empty_scores(name: str) -> None:
    arr = _input_for(name, np.empty((0, 2, 3)))
    assert STRATEGIES[name].score(arr, RNG).shape == (0,)


def _mc_probs() -> st.SearchStrategy[np.ndarray]:
    """Random `(n, T, C)` probability arrays (rows normalised from positive weights)."""
    shapes = st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 6))
    weights = shapes.flatmap(
        lambda s: arrays(np.float64, s, elements=st.floats(0.0, 1.0, allow_subnormal=False))
    )
    return weights.map(lambda w: (w + 1e-3) / (w + 1e-3).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=40, deadline=None)
@given(mc=_mc_probs(), seed=st.integers(0, 2**16))
def test_scores_are_finite_and_permutation_equivariant(name: str, mc, seed: int) -> None:
    strategy = STRATEGIES[name]
    arr = _input_for(name, mc)
    s = strategy.score(arr, np.random.default_rng(seed))
    assert s.shape == (arr.shape[0],) and np.isfinite(s).all()
    assert (s >= strategy.floor - 1e-12).all()  # power sampling relies on the floor
    perm = np.random.default_rng(seed).permutation(arr.shape[0])
    s_perm = strategy.score(arr[perm], np.random.default_rng(seed))
    if name == "random":
        assert np.array_equal(s_perm, s)  # depends on the rng, not on the rows
    else:
        assert np.allclose(s_perm, s[perm], atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(mc=_mc_probs())
def test_uncertainty_scores_respect_their_bounds(mc) -> None:
    p = mc.mean(axis=1)  # (n, C)
    c = p.shape[1]
    assert (least_confidence(p, RNG) >= -1e-12).all()
    assert (least_confidence(p, RNG) <= 1 - 1 / c + 1e-9).all()
    assert ((margin(p, RNG) <= 1e-12) & (margin(p, RNG) >= -1)).all()
    assert (entropy(p, RNG) <= np.log(c) + 1e-9).all()
    b = bald(mc, RNG)
    assert (b >= 0).all() and (b <= entropy(p, RNG) + 1e-9).all()  # MI <= H(mean)
