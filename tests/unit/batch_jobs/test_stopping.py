"""Stopping signals: known answers and the input contract."""

from __future__ import annotations

import numpy as np
import pytest

from batch_jobs.stopping import gain_per_1k, stability, stop_suggested
from postclf_errors import InvalidInputError


def test_stability_known_answers() -> None:
    assert stability(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3])) == 0.75
    assert stability(np.zeros(0, int), np.zeros(0, int)) == 1.0
    with pytest.raises(InvalidInputError, match="predictions"):
        stability(np.zeros(3), np.zeros(4))


def test_gain_is_the_slope_per_thousand_labels() -> None:
    labels = np.array([500, 1000, 1500, 2000])
    assert gain_per_1k(labels, 0.5 + labels * 2e-5) == pytest.approx(2.0 / 100)
    assert gain_per_1k(labels[:1], np.array([0.5])) is None


def test_stop_after_a_stable_run() -> None:
    assert stop_suggested([0.9, 0.995, 0.99, 0.98, 0.991, 0.992, 0.999]) == 6
    assert stop_suggested([0.9, 0.95]) is None
