"""Data set loading: npz and parquet round trips, missing views, the MNIST adapter, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs.datasets import load_dataset, stratified_split
from postclf_errors import InvalidInputError, NotFoundError


def _arrays(n: int = 30, dim: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(n, dim)).astype(np.float32)
    text = rng.normal(size=(n, dim + 1)).astype(np.float32)
    image[[1, 5]] = np.nan  # missing image view
    text[7] = np.nan  # missing text view
    return {
        "image": image,
        "text": text,
        "label": (np.arange(n) % 3).astype(np.int16),
        "class_names": np.array(["a", "b", "c"]),
        "post_id": np.array([f"p{i}" for i in range(n)]),
    }


def test_npz_round_trip_keeps_views_masks_and_labels(tmp_path: Path) -> None:
    arrays = _arrays()
    np.savez(tmp_path / "toy.npz", **arrays)
    ds = load_dataset("toy", data_dir=tmp_path)
    assert len(ds) == 30 and ds.class_names == ["a", "b", "c"]
    assert ds.labels.dtype == np.int64
    assert not ds.views.image_mask[[1, 5]].any() and ds.views.image_mask.sum() == 28
    assert not ds.views.text_mask[7] and ds.views.text_mask.sum() == 29
    back = ds.views.to_nan_rows()
    np.testing.assert_array_equal(back["image"], arrays["image"])
    np.testing.assert_array_equal(back["text"], arrays["text"])
    assert ds.split is None
    assert ds.post_ids[3] == "p3"


def test_parquet_list_columns_with_null_rows_are_missing_views(tmp_path: Path) -> None:
    arrays = _arrays()
    image = [None if np.isnan(r).all() else r.tolist() for r in arrays["image"]]
    text = [None if np.isnan(r).all() else r.tolist() for r in arrays["text"]]
    table = pa.table(
        {
            "image": pa.array(image, type=pa.list_(pa.float32(), 4)),  # fixed-size list
            "text": pa.array(text, type=pa.list_(pa.float32())),  # variable list
            "label": arrays["label"],
            "split": ["train"] * 20 + ["val"] * 5 + ["test"] * 5,
        }
    )
    pq.write_table(table, tmp_path / "toy.parquet")
    ds = load_dataset(tmp_path / "toy.parquet")
    np.testing.assert_array_equal(ds.views.to_nan_rows()["image"], arrays["image"])
    np.testing.assert_array_equal(ds.views.to_nan_rows()["text"], arrays["text"])
    assert ds.class_names == ["0", "1", "2"]
    assert len(ds.rows("train")) == 20 and len(ds.rows("test")) == 5


def test_mnist_adapter_follows_the_published_protocol(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist_seed.npz",
        x_train=rng.integers(0, 256, (4100, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 4100, dtype=np.uint8),
        x_test=rng.integers(0, 256, (500, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 500, dtype=np.uint8),
    )
    ds = load_dataset("mnist_seed", data_dir=tmp_path)
    assert ds.views.dims == {"image": 784, "text": None}
    assert len(ds.rows("train")) == 4000 and len(ds.rows("test")) == 400
    assert len(ds.rows("val")) == 0
    assert ds.views.image.min() >= 0.0 and ds.views.image.max() <= 1.0
    assert ds.class_names == [str(c) for c in range(10)]


def test_real_mnist_seed_shapes(data_dir: Path) -> None:
    ds = load_dataset("mnist_seed", data_dir=data_dir)
    assert ds.views.image.shape == (4400, 784) and ds.views.text is None


def test_reviews_small_has_its_own_split(data_dir: Path) -> None:
    ds = load_dataset("reviews_small", data_dir=data_dir)
    assert len(ds) == 901 and len(ds.class_names) == 18
    assert set(np.unique(ds.split)) == {"train", "val", "test"}
    assert ds.with_split(seed=1) is ds  # an existing split is kept


def test_missing_split_gets_a_seeded_stratified_64_16_20_split(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(4), 50)
    split = stratified_split(labels, np.random.default_rng(3))
    for c in range(4):
        counts = {s: int(np.sum(split[labels == c] == s)) for s in ("train", "val", "test")}
        assert counts == {"train": 32, "val": 8, "test": 10}
    again = stratified_split(labels, np.random.default_rng(3))
    np.testing.assert_array_equal(split, again)
    np.savez(tmp_path / "toy.npz", **_arrays())
    ds = load_dataset(tmp_path / "toy.npz").with_split(seed=0)
    assert set(np.unique(ds.split)) == {"train", "val", "test"}


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_dataset("nope", data_dir=tmp_path)
    arrays = _arrays()
    del arrays["label"]
    np.savez(tmp_path / "nolabel.npz", **arrays)
    with pytest.raises(InvalidInputError) as err:
        load_dataset(tmp_path / "nolabel.npz")
    assert err.value.field == "label"
    arrays = _arrays()
    arrays["image"][2, 0] = np.nan  # partly NaN: corrupt, not missing
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(InvalidInputError):
        load_dataset(tmp_path / "partial.npz")
