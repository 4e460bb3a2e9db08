"""Labeled embedding data sets for the simulation and benchmarks (.npz, .parquet, MNIST seed).

A data set file holds `image` and/or `text` embeddings (an all-NaN row, or a null list in
Parquet, marks a missing view), an integer `label`, and optionally `class_names`, `split`
(train/val/test) and `post_id`. `mnist_seed.npz` (keys x_train/y_train/x_test/y_test) is read
with the published experiment's protocol: one "image" view of pixels / 255, train =
x_train[:4000], test = x_test[:400], no validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data import Views
from postclf_errors import InvalidInputError, NotFoundError

# The one data folder constant: ../shared/data beside the checkout (not the working directory).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLITS = ("train", "val", "test")
MNIST_KEYS = {"x_train", "y_train", "x_test", "y_test"}
MNIST_TRAIN, MNIST_TEST = 4000, 400  # the published experiment's slices


@dataclass(frozen=True)
class Dataset:
    """`n` labeled posts: ids `(n,)`, views, labels `(n,)` int64, split `(n,)` str or None."""

    name: str
    post_ids: np.ndarray
    views: Views
    labels: np.ndarray
    class_names: list[str]
    split: np.ndarray | None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, part: str) -> np.ndarray:
        """Row indices `(k,)` of split `part` (empty when the data set has no such rows)."""
        if self.split is None:
            raise InvalidInputError("data set has no split; call with_split first", "split")
        return np.flatnonzero(self.split == part)

    def with_split(self, seed: int, fractions: tuple[float, float] = (0.64, 0.16)) -> Dataset:
        """This data set with a stratified train/val/test split if it has none yet."""
        if self.split is not None:
            return self
        split = stratified_split(self.labels, np.random.default_rng(seed), fractions)
        return Dataset(self.name, self.post_ids, self.views, self.labels, self.class_names, split)


def stratified_split(
    labels: np.ndarray, rng: np.random.Generator, fractions: tuple[float, float] = (0.64, 0.16)
) -> np.ndarray:
    """`(n,)` str: per class, shuffled, `fractions[0]` train, `fractions[1]` val, rest test."""
    split = np.full(labels.shape[0], "test", dtype="<U5")
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        split[idx[:n_train]] = "train"
        split[idx[n_train : n_train + n_val]] = "val"
    return split


def resolve(name_or_path: str | Path, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    """A path as given if it exists, else `data_dir/<name>.npz` (or .parquet)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for suffix in (".npz", ".parquet"):
        candidate = data_dir / f"{name_or_path}{suffix}"
        if candidate.exists():
            return candidate
    raise NotFoundError(f"no data set {name_or_path!r} (looked in {data_dir})")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The one file reader: every column of an .npz or .parquet file as an array (embedding
    columns `(n, dim)` float32 with NaN rows where a view is missing)."""
    if not path.exists():
        raise NotFoundError(f"no such file: {path}")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    raise InvalidInputError(f"unsupported file type {path.suffix!r} (.npz or .parquet)", "path")


def load_dataset(name_or_path: str | Path, data_dir: Path = DEFAULT_DATA_DIR) -> Dataset:
    """Read a labeled data set by name (`data_dir/<name>.npz|.parquet`) or path."""
    path = resolve(name_or_path, data_dir)
    arrays = read_arrays(path)
    if arrays.keys() >= MNIST_KEYS:
        return _mnist(path.stem, arrays)
    return _from_arrays(path.stem, arrays)


def _from_arrays(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    """Validate and assemble the generic layout (see module docstring)."""
    if "label" not in arrays:
        raise InvalidInputError("data set has no 'label' column", "label")
    if "image" not in arrays and "text" not in arrays:
        raise InvalidInputError("data set has neither 'image' nor 'text'", "views")
    labels = np.asarray(arrays["label"]).astype(np.int64)  # (n,)
    n = labels.shape[0]
    views = Views.from_nan_rows(arrays.get("image"), arrays.get("text"))
    if len(views) != n:
        raise InvalidInputError(f"{len(views)} embedding rows for {n} labels", "label")
    if labels.min() < 0:
        raise InvalidInputError("negative class id", "label")
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"]]
    else:
        class_names = [str(c) for c in range(int(labels.max()) + 1)]
    if labels.max() >= len(class_names):
        raise InvalidInputError(f"class id {labels.max()} ≥ {len(class_names)} names", "label")
    split = None
    if "split" in arrays:
        split = np.asarray(arrays["split"]).astype("<U5")
        bad = set(np.unique(split)) - set(SPLITS)
        if bad:
            raise InvalidInputError(f"unknown split values {sorted(bad)}", "split")
    post_ids = arrays.get("post_id")
    if post_ids is None:
        post_ids = np.array([f"{name}-{i:06d}" for i in range(n)])
    return Dataset(name, np.asarray(post_ids).astype(str), views, labels, class_names, split)


def _mnist(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    """The published protocol: x_train[:4000] / 255 to train, x_test[:400] / 255 to test."""
    x_tr = arrays["x_train"][:MNIST_TRAIN].reshape(-1, 28 * 28)  # (4000, 784)
    x_te = arrays["x_test"][:MNIST_TEST].reshape(-1, 28 * 28)  # (400, 784)
    x = np.concatenate([x_tr, x_te]).astype(np.float32) / np.float32(255.0)
    labels = np.concatenate(
        [arrays["y_train"][:MNIST_TRAIN], arrays["y_test"][:MNIST_TEST]]
    ).astype(np.int64)
    split = np.array(["train"] * len(x_tr) + ["test"] * len(x_te), dtype="<U5")
    ids = [f"mnist-train-{i:05d}" for i in range(len(x_tr))]
    ids += [f"mnist-test-{i:05d}" for i in range(len(x_te))]
    views = Views(x, None, np.ones(len(x), bool), None)
    return Dataset(name, np.array(ids), views, labels, [str(c) for c in range(10)], split)


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    """Columns as arrays; list / fixed-size-list embedding columns become `(n, dim)` float32."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, np.ndarray] = {}
    for col in table.column_names:
        column = table.column(col).combine_chunks()
        if col in ("image", "text"):
            out[col] = _list_column(column, col)
        else:
            out[col] = np.asarray(column.to_pylist())
    return out


def _list_column(arr, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """`(n, dim)` float32 from a (fixed-size) list array; a null row becomes NaN (= missing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise InvalidInputError(f"expected a list column, got {arr.type}", name)
    valid = np.asarray(arr.is_valid())  # (n,) bool
    lengths = np.asarray(pc.list_value_length(arr).fill_null(-1))[valid]
    if len(np.unique(lengths)) > 1:
        raise InvalidInputError(f"embedding rows have lengths {np.unique(lengths)}", name)
    dim = int(lengths[0]) if len(lengths) else 0
    out = np.full((len(arr), dim), np.nan, dtype=np.float32)
    values = arr.filter(pa.array(valid)).flatten()  # values of the present rows, in order
    out[valid] = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return out
