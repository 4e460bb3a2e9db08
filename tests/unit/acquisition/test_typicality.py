"""Typicality cold start: the densest point of each uncovered cluster, known answers and
properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.typicality import typical_picks, typicality
from postclf_errors import InvalidInputError


def _blobs(rng: np.random.Generator, centers: np.ndarray, n: int) -> np.ndarray:
    """`n` points around each center plus the centers themselves (the typical points)."""
    pts = [c + 0.05 * rng.normal(size=(n, centers.shape[1])) for c in centers]
    return np.concatenate([*pts, centers]).astype(np.float32)


def test_the_densest_point_is_most_typical() -> None:
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [-0.1, 0.0], [5.0, 5.0]])
    t = typicality(x, k_nn=3)
    assert int(np.argmax(t)) == 0 and int(np.argmin(t)) == 4
    assert typicality(x[:1], 3).tolist() == [0.0]


def test_one_pick_per_cluster_near_its_center() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], np.float32)
    x = _blobs(rng, centers, 40)
    picks = typical_picks(x, 4, np.random.default_rng(1))
    assert picks.shape == (4,) and np.unique(picks).shape == (4,)
    nearest = np.argmax(x[picks] @ centers.T, axis=1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]  # every cluster once
    assert (np.linalg.norm(x[picks] - centers[nearest], axis=1) < 0.1).all()


def test_labeled_clusters_are_visited_last() -> None:
    rng = np.random.default_rng(2)
    centers = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    x = _blobs(rng, centers, 30)
    labeled = np.repeat(centers[:2], 5, axis=0)  # clusters 0 and 1 are covered
    pick = typical_picks(x, 1, np.random.default_rng(3), labeled_features=labeled)
    assert int(np.argmax(x[pick] @ centers.T)) == 2


def test_query_larger_than_the_candidates_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="q"):
        typical_picks(np.zeros((3, 2), np.float32), 4, np.random.default_rng(0))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 60), q=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_picks_are_distinct_valid_rows_and_reproducible(n: int, q: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    a = typical_picks(x, q, np.random.default_rng(seed))
    assert a.shape == (q,) and np.unique(a).shape == (q,) and ((a >= 0) & (a < n)).all()
    assert np.array_equal(a, typical_picks(x, q, np.random.default_rng(seed)))
