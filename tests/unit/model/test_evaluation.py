"""The one evaluator: known answers, the input contract, and a Hypothesis property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.evaluation import per_class_f1, rare_classes, scores
from postclf_errors import InvalidInputError


def test_known_answer() -> None:
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    f1 = per_class_f1(pred, true, 4)
    # class 0: tp 1, fp 1, fn 1 → 0.5; class 1: tp 2, fp 1, fn 0 → 0.8; class 2: 0; class 3 absent
    assert np.allclose(f1[:3], [0.5, 0.8, 0.0]) and np.isnan(f1[3])
    m = scores(pred, true, 4, rare=np.array([1, 2]))
    assert m.accuracy == pytest.approx(0.6)
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m.rare_f1 == pytest.approx(0.4) and m.n == 5


def test_rare_classes_are_the_smallest() -> None:
    labels = np.array([0] * 5 + [1] * 1 + [2] * 3 + [3] * 2)
    assert rare_classes(labels, 4, 0.5).tolist() == [1, 3]
    with pytest.raises(InvalidInputError, match="rare_fraction"):
        rare_classes(labels, 4, 0.0)


@pytest.mark.parametrize(
    ("pred", "true", "field"),
    [
        (np.array([0, 1]), np.array([0]), "pred"),
        (np.array([0, 5]), np.array([0, 1]), "pred"),
        (np.array([0, 1]), np.array([0, -1]), "true"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "pred"),
    ],
)
def test_bad_input_names_the_field(pred: np.ndarray, true: np.ndarray, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        scores(pred, true, 3)
    assert err.value.field == field


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=60))
def test_f1_matches_the_definition(pairs: list[tuple[int, int]]) -> None:
    pred, true = np.array([p for p, _ in pairs]), np.array([t for _, t in pairs])
    f1 = per_class_f1(pred, true, 5)
    for c in range(5):
        tp = np.sum((pred == c) & (true == c))
        fp, fn = np.sum((pred == c) & (true != c)), np.sum((pred != c) & (true == c))
        if tp + fp + fn == 0:
            assert np.isnan(f1[c])
        else:
            assert f1[c] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert 0.0 <= scores(pred, true, 5).macro_f1 <= 1.0
