"""Embedding views with explicit presence masks, and the per-modality standardiser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from postclf_errors import InvalidInputError

MODALITIES = ("image", "text")


def _mask_from_nan_rows(x: np.ndarray, name: str) -> np.ndarray:
    """Rows that are entirely NaN are missing; a partly-NaN row is corrupt, not missing."""
    nan = np.isnan(x)
    missing = nan.all(axis=1)
    partial = nan.any(axis=1) & ~missing
    if partial.any():
        row = int(np.flatnonzero(partial)[0])
        raise InvalidInputError(f"row {row} is partly NaN", field=name)
    return ~missing


@dataclass(frozen=True)
class Views:
    """A batch of posts: per modality a `(n, dim)` float32 array and a `(n,)` presence mask.

    A modality the data set does not have at all is `None`. Rows where the mask is False hold
    zeros and are never read as data: the mask, not the values, says what is missing.
    """

    image: np.ndarray | None
    text: np.ndarray | None
    image_mask: np.ndarray | None
    text_mask: np.ndarray | None

    def __post_init__(self) -> None:
        n = None
        for name in MODALITIES:
            x, m = getattr(self, name), getattr(self, f"{name}_mask")
            if (x is None) != (m is None):
                raise InvalidInputError("array and mask must both be given or both None", name)
            if x is None:
                continue
            if x.ndim != 2 or m.shape != (x.shape[0],):
                raise InvalidInputError(f"shape {x.shape} / mask {m.shape} mismatch", name)
            if n is not None and x.shape[0] != n:
                raise InvalidInputError("modalities have different row counts", name)
            n = x.shape[0]
        if n is None:
            raise InvalidInputError("at least one modality is required", "views")

    @classmethod
    def from_nan_rows(cls, image: np.ndarray | None, text: np.ndarray | None) -> Views:
        """Build from arrays where an all-NaN row marks a missing modality (the data sets' form)."""
        arrays: dict[str, np.ndarray | None] = {}
        for name, x in (("image", image), ("text", text)):
            if x is None:
                arrays[name] = arrays[f"{name}_mask"] = None
                continue
            x = np.asarray(x, dtype=np.float32)
            mask = _mask_from_nan_rows(x, name)
            arrays[name] = np.where(mask[:, None], x, np.float32(0.0))
            arrays[f"{name}_mask"] = mask
        return cls(**arrays)

    def __len__(self) -> int:
        x = self.image if self.image is not None else self.text
        assert x is not None  # guaranteed by __post_init__
        return int(x.shape[0])

    @property
    def dims(self) -> dict[str, int | None]:
        """Embedding width per modality, None where the modality is absent from the data."""
        return {
            name: (None if getattr(self, name) is None else int(getattr(self, name).shape[1]))
            for name in MODALITIES
        }

    def take(self, idx: np.ndarray | slice) -> Views:
        """Rows `idx` of every array (fancy or slice indexing)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Views(pick(self.image), pick(self.text), pick(self.image_mask), pick(self.text_mask))

    def to_nan_rows(self) -> dict[str, np.ndarray | None]:
        """Inverse of `from_nan_rows`: missing rows become NaN (for storage and files)."""
        out: dict[str, np.ndarray | None] = {}
        for name in MODALITIES:
            x, m = getattr(self, name), getattr(self, f"{name}_mask")
            out[name] = None if x is None else np.where(m[:, None], x, np.float32(np.nan))
        return out

    @staticmethod
    def concat(parts: list[Views]) -> Views:
        """Stack batches that share the same modalities."""
        if not parts:
            raise InvalidInputError("nothing to concatenate", "views")

        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            if any(a is None for a in arrays):
                if not all(a is None for a in arrays):
                    raise InvalidInputError("batches disagree on modalities", name)
                return None
            return np.concatenate(arrays)

        return Views(cat("image"), cat("text"), cat("image_mask"), cat("text_mask"))


@dataclass(frozen=True)
class Standardizer:
    """Per-modality feature mean/std fitted on present training rows (StandardScaler's role)."""

    mean: dict[str, np.ndarray]  # modality -> (dim,)
    std: dict[str, np.ndarray]  # modality -> (dim,); 1 for constant features

    @classmethod
    def fit(cls, views: Views) -> Standardizer:
        mean, std = {}, {}
        for name in MODALITIES:
            x, m = getattr(views, name), getattr(views, f"{name}_mask")
            if x is None:
                continue
            rows = x[m] if m.any() else np.zeros((1, x.shape[1]), np.float32)
            mean[name] = rows.mean(axis=0).astype(np.float32)
            sd = rows.std(axis=0)
            # A (near-)constant feature is left unscaled: dividing by a tiny std would turn any
            # later deviation (a pixel never lit in a small labeled set) into a huge input.
            std[name] = np.where(sd < 1e-3, 1.0, sd).astype(np.float32)
        return cls(mean, std)

    def transform(self, views: Views) -> Views:
        """Standardise present rows; missing rows stay zero (and stay masked)."""
        out: dict[str, np.ndarray | None] = {}
        for name in MODALITIES:
            x, m = getattr(views, name), getattr(views, f"{name}_mask")
            if x is None:
                out[name] = None
                continue
            if name not in self.mean:
                raise InvalidInputError("model was not trained with this modality", name)
            z = x - self.mean[name]  # one new array, then in place (the same values)
            z /= self.std[name]
            z[~m] = 0.0
            out[name] = z.astype(np.float32, copy=False)
        return Views(out["image"], out["text"], views.image_mask, views.text_mask)

    def to_state(self) -> dict[str, list[float]]:
        state = {}
        for name in self.mean:
            state[f"{name}.mean"] = self.mean[name].tolist()
            state[f"{name}.std"] = self.std[name].tolist()
        return state

    @classmethod
    def from_state(cls, state: dict[str, list[float]]) -> Standardizer:
        names = {k.split(".")[0] for k in state}
        return cls(
            {n: np.asarray(state[f"{n}.mean"], np.float32) for n in names},
            {n: np.asarray(state[f"{n}.std"], np.float32) for n in names},
        )
