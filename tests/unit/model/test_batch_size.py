"""The adaptive batch size b + floor((n mod b) / floor(n / b))."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.training import adaptive_batch_size


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, 1),  # n < b: one batch of n
        (300, 300),
        (511, 511),
        (512, 512),  # n = b
        (1025, 512),  # n = 2b + 1: remainder 1 over 2 batches rounds down
        (1000, 1000),  # 512 + 488 // 1
        (1500, 750),  # 512 + 476 // 2: two even batches
        (2000, 666),  # 512 + 464 // 3
    ],
)
def test_known_values(n: int, expected: int) -> None:
    assert adaptive_batch_size(n, 512) == expected


@given(n=st.integers(1, 100_000), b=st.integers(1, 4096))
def test_batches_cover_n_with_no_small_tail(n: int, b: int) -> None:
    bs = adaptive_batch_size(n, b)
    assert bs >= min(n, b)
    # n // bs batches of size bs absorb the remainder: it is smaller than the batch count.
    assert n % bs < max(1, n // bs) or n < b


def test_rejects_non_positive() -> None:
    with pytest.raises(ValueError):
        adaptive_batch_size(0, 512)
