"""Head-disagreement scores: known answers, one-head rows, the input contract, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from acquisition.committee import (
    fused_conflict,
    kl_to_consensus,
    margin_committee,
    members,
    vote_entropy,
)
from postclf_errors import InvalidInputError

RNG = np.random.default_rng(0)
SCORES = (vote_entropy, kl_to_consensus, fused_conflict, margin_committee)
A, B, C = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
Z = [0.0, 0.0, 0.0]  # an absent head


def test_agreeing_heads_score_zero_and_three_way_split_scores_log3() -> None:
    heads = np.array([[A, A, A], [A, B, C], [A, A, B]])  # (3, K=3, C=3)
    ve = vote_entropy(heads, RNG)
    assert np.allclose(ve, [0.0, np.log(3), -(2 / 3) * np.log(2 / 3) - (1 / 3) * np.log(1 / 3)])
    kl = kl_to_consensus(heads, RNG)
    assert kl[0] == pytest.approx(0.0) and kl[1] == pytest.approx(np.log(3))
    assert kl[1] > kl[2] > kl[0]


def test_fused_conflict_compares_the_fused_head_with_each_branch() -> None:
    heads = np.array([[A, A, A], [B, A, A], [B, B, A], [A, Z, B]])  # image, text, fused
    assert np.allclose(fused_conflict(heads, RNG), [0.0, 0.5, 1.0, 1.0])


def test_one_head_rows_cannot_disagree() -> None:
    """A post with one view has one head: every disagreement score is 0 for it, and the
    margin-committee score falls back to that head's own margin."""
    p = [0.6, 0.3, 0.1]
    heads = np.array([[p, Z, Z], [Z, p, Z]])
    for score in (vote_entropy, kl_to_consensus, fused_conflict):
        assert np.allclose(score(heads, RNG), 0.0)
    assert np.allclose(margin_committee(heads, RNG), [-0.3, -0.3])


def test_margin_committee_ranks_contested_above_agreed_at_equal_margin() -> None:
    agreed = [[0.5, 0.3, 0.2]] * 3
    contested = [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.5, 0.2, 0.3]]  # mean [0.5, 0.3, 0.2]
    s = margin_committee(np.array([agreed, contested]), RNG)
    assert s[1] > s[0] and s[0] == pytest.approx(-0.2)


@pytest.mark.parametrize(
    "bad",
    [
        np.full((2, 3), 1 / 3),  # 2-D
        np.array([[[0.5, 0.2, 0.1]] * 3]),  # a member that is neither a distribution nor zeros
        np.array([[[1.5, -0.5, 0.0]] * 3]),  # negative
        np.array([[[np.nan, 0.5, 0.5]] * 3]),
    ],
)
@pytest.mark.parametrize("score", SCORES)
def test_contract_violations_name_the_field(score, bad: np.ndarray) -> None:
    with pytest.raises(InvalidInputError) as err:
        score(bad, RNG)
    assert err.value.field == "head_probs"


def _heads() -> st.SearchStrategy[np.ndarray]:
    """Random `(n, 3, C)` heads, each member present or absent at random."""
    shapes = st.tuples(st.integers(1, 10), st.integers(2, 6))
    return shapes.flatmap(
        lambda s: st.tuples(
            arrays(np.float64, (s[0], 3, s[1]), elements=st.floats(0.0, 1.0)),
            arrays(np.bool_, (s[0], 3)),
        )
    ).map(_normalise)


def _normalise(parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w, keep = parts
    p = (w + 1e-3) / (w + 1e-3).sum(axis=-1, keepdims=True)
    return np.where(keep[..., None], p, 0.0)


@settings(max_examples=60, deadline=None)
@given(heads=_heads())
def test_properties(heads: np.ndarray) -> None:
    _, present = members(heads)
    few = present.sum(axis=1) < 2
    ve, kl, fc = vote_entropy(heads, RNG), kl_to_consensus(heads, RNG), fused_conflict(heads, RNG)
    assert (ve >= 0).all() and (ve <= np.log(3) + 1e-9).all()
    assert (kl >= 0).all() and (kl <= np.log(3) + 1e-9).all()  # JS divergence of 3 members
    assert (fc >= 0).all() and (fc <= 1 + 1e-9).all()
    assert np.allclose(ve[few], 0) and np.allclose(kl[few], 0) and np.allclose(fc[few], 0)
    perm = heads[:, [1, 0, 2]]  # swapping the two branch heads changes nothing
    for score in SCORES:
        assert np.allclose(score(perm, RNG), score(heads, RNG))
