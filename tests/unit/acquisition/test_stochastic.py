"""Stochastic batch acquisition: Gumbel-top-k samples in proportion to the weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.stochastic import perturb
from postclf_errors import InvalidInputError


def test_top_is_the_identity_and_draws_nothing() -> None:
    rng = np.random.default_rng(1)
    s = np.array([0.3, -0.2, 0.9])
    assert np.array_equal(perturb(s, -1.0, "top", 1.0, rng), s)
    assert rng.random() == np.random.default_rng(1).random()  # rng untouched


def test_power_sampling_frequencies_follow_the_weights() -> None:
    """Known answer: weights (s - floor)^(1/T) = [1, 3] at T=1 → first pick 3:1."""
    rng = np.random.default_rng(0)
    s = np.array([-0.9, -0.7])  # margin scores, floor -1: weights 0.1 and 0.3
    firsts = [int(np.argmax(perturb(s, -1.0, "power", 1.0, rng))) for _ in range(4000)]
    assert np.mean(firsts) == pytest.approx(0.75, abs=0.03)


def test_low_temperature_tends_to_top_k() -> None:
    s = np.linspace(0, 1, 50)
    keys = perturb(s, 0.0, "power", 1e-3, np.random.default_rng(3))
    assert set(np.argsort(-keys)[:5]) == set(range(45, 50))


BAD = [("sideways", 1.0, "sampling"), ("power", 0.0, "temperature")]
BAD += [("softmax", float("nan"), "temperature")]


@pytest.mark.parametrize(("sampling", "t", "field"), BAD)
def test_bad_settings_name_the_field(sampling: str, t: float, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        perturb(np.zeros(3), 0.0, sampling, t, np.random.default_rng(0))
    assert err.value.field == field


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30), st.integers(0, 2**16))
def test_keys_are_finite_and_same_seed_same_keys(s: list[float], seed: int) -> None:
    arr = np.array(s)
    for mode in ("power", "softmax"):
        a = perturb(arr, 0.0, mode, 0.5, np.random.default_rng(seed))
        assert np.isfinite(a).all() and a.shape == arr.shape
        assert np.array_equal(a, perturb(arr, 0.0, mode, 0.5, np.random.default_rng(seed)))
