"""Stochastic batch acquisition: sample the batch in proportion to the scores instead of top-k.

Top-k of `key = log(w) + Gumbel` is a sample of k rows without replacement with probability
∝ `w` (Gumbel-top-k; Kool et al. 2019), so the perturbed scores drop into every selector and
into the streaming scorer unchanged (each row's key depends on that row alone). Kirsch et al.
2023 ("Stochastic batch acquisition") find such sampling as good as costly batch-aware methods:
- `power`: `w = (score - floor)^(1/T)` (PowerBALD / power-margin; `floor` is the strategy's
  lowest possible score, e.g. -1 for margin, so `score - floor` is ≥ 0);
- `softmax`: `w = exp(score / T)`;
- `top`: the scores unchanged (deterministic top-k), and no randomness drawn.
"""

from __future__ import annotations

import numpy as np

from postclf_errors import InvalidInputError

SAMPLINGS = ("top", "power", "softmax")
_TINY = 1e-300  # log guard: a zero weight becomes a very unlikely (not impossible) pick


def check_sampling(sampling: str, temperature: float) -> None:
    """Raise InvalidInputError naming the field for an unknown mode or a temperature ≤ 0."""
    if sampling not in SAMPLINGS:
        raise InvalidInputError(f"must be one of {SAMPLINGS}, got {sampling!r}", "sampling")
    if not (np.isfinite(temperature) and temperature > 0):
        raise InvalidInputError(f"must be a finite number > 0, got {temperature!r}", "temperature")


def perturb(
    scores: np.ndarray, floor: float, sampling: str, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """Sampling keys `(n,)` from scores `(n,)`: their top-k is the sampled batch."""
    check_sampling(sampling, temperature)
    return sampling_keys(
        scores, floor, sampling, temperature, sampling_noise(len(scores), sampling, rng)
    )


def sampling_noise(n: int, sampling: str, rng: np.random.Generator) -> np.ndarray | None:
    """The per-row Gumbel draws `(n,)` of `sampling` (None for `top`, which draws nothing), so
    a caller can key the same rows twice (a coarse and an exact score) with the same noise."""
    return None if sampling == "top" else rng.gumbel(size=n)


def sampling_keys(
    scores: np.ndarray, floor: float, sampling: str, temperature: float, noise: np.ndarray | None
) -> np.ndarray:
    """`perturb`'s keys from scores `(n,)` and their `sampling_noise` `(n,)`."""
    s = np.asarray(scores, np.float64)
    if sampling == "top":
        return s
    assert noise is not None and noise.shape == s.shape
    if sampling == "power":
        return np.log(np.maximum(s - floor, _TINY)) / temperature + noise
    return s / temperature + noise
