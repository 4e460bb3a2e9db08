"""Pool: round trip, missing views, de-duplication, restart, dims, several writers."""

from __future__ import annotations

import numpy as np
import pytest

from model.data import Views
from postclf_errors import InvalidInputError
from store.pool import Pool


def make_views(n: int, seed: int, img_dim: int = 4, txt_dim: int = 3) -> Views:
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, img_dim)).astype(np.float32)
    txt = rng.normal(size=(n, txt_dim)).astype(np.float32)
    img[::3] = np.nan  # every third post has no image
    return Views.from_nan_rows(img, txt)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def same(a: Views, b: Views) -> None:
    for name in ("image", "text", "image_mask", "text_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_round_trip_with_missing_views_and_buffer(tmp_path):
    pool = Pool(tmp_path, flush_rows=4)
    v = make_views(10, 0)
    assert pool.append(ids("a", 10), v) == 10  # 10 >= 4: flushed as one segment
    w = make_views(2, 1)
    pool.append(ids("b", 2), w)  # stays buffered
    got_ids, got = pool.read()
    assert got_ids.tolist() == ids("a", 10) + ids("b", 2)
    same(got, Views.concat([v, w]))
    assert not got.image_mask[0] and got.image[0].sum() == 0.0
    assert len(pool) == 12


def test_restart_sees_flushed_rows_only(tmp_path):
    pool = Pool(tmp_path, flush_rows=100)
    pool.append(ids("a", 5), make_views(5, 0))
    pool.flush()
    pool.append(ids("b", 3), make_views(3, 1))  # lost without a flush (buffered)
    again = Pool(tmp_path)
    assert len(again) == 5
    assert again.read()[0].tolist() == ids("a", 5)
    assert again.append(ids("a", 5), make_views(5, 0)) == 0  # already pooled: not re-appended


def test_dedupe_first_occurrence_wins(tmp_path):
    pool = Pool(tmp_path)
    first = make_views(3, 0)
    assert pool.append(["x", "y", "x"], first) == 2
    assert pool.append(["y", "z"], make_views(2, 5)) == 1
    got_ids, got = pool.read()
    assert got_ids.tolist() == ["x", "y", "z"]
    same(got.take(np.arange(2)), first.take(np.arange(2)))


def test_two_writers_on_one_folder_are_deduplicated_on_read(tmp_path):
    a, b = Pool(tmp_path), Pool(tmp_path)  # e.g. two server processes
    va, vb = make_views(3, 0), make_views(3, 1)
    a.append(["p", "q", "r"], va)
    a.flush()
    b.append(["r", "s", "p"], vb)  # b does not know a's rows yet
    b.flush()
    got_ids, got = Pool(tmp_path).read()
    assert sorted(got_ids.tolist()) == ["p", "q", "r", "s"]
    row = {p: i for i, p in enumerate(got_ids.tolist())}
    np.testing.assert_array_equal(got.text[row["r"]], va.text[2])  # first segment wins
    assert len(set(got_ids.tolist())) == len(got_ids)


def test_get_returns_requested_order_and_skips_unknown(tmp_path):
    pool = Pool(tmp_path, flush_rows=4)
    v = make_views(6, 0)
    pool.append(ids("a", 6), v)
    found, got = pool.get(["a5", "nope", "a0", "a5"])
    assert found.tolist() == ["a5", "a0"]
    same(got, v.take(np.array([5, 0])))
    found, _ = pool.get(["nope"])
    assert found.tolist() == []


def test_dimension_mismatch_is_invalid_input(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 2), make_views(2, 0))
    pool.flush()
    with pytest.raises(InvalidInputError) as err:
        Pool(tmp_path).append(ids("b", 2), make_views(2, 0, img_dim=5))
    assert err.value.field == "image"


def test_batch_without_a_view_is_stored_as_missing(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 2), make_views(2, 0))
    txt_only = Views.from_nan_rows(None, np.ones((2, 3), np.float32))
    pool.append(ids("b", 2), txt_only)
    _, got = pool.read()
    assert got.image_mask.tolist()[2:] == [False, False]


def test_empty_pool(tmp_path):
    pool = Pool(tmp_path)
    assert len(pool) == 0
    assert pool.get(["a"])[0].tolist() == []
    with pytest.raises(InvalidInputError):
        pool.read()


def test_concurrent_appends_lose_nothing(tmp_path):
    import threading

    pool = Pool(tmp_path, flush_rows=7)

    def work(t: int) -> None:
        for k in range(10):
            pool.append([f"t{t}-{k}-{i}" for i in range(5)], make_views(5, t * 100 + k))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.flush()
    got_ids, got = Pool(tmp_path).read()
    assert len(got_ids) == len(set(got_ids.tolist())) == 4 * 10 * 5
    assert got.image_mask.sum() < len(got_ids)  # missing views survived the round trip
