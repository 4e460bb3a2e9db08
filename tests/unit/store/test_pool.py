"""Pool: round trip in chunks, durability of the commit record, day partitions and retention,
variable-length ids, several writers, bounds, and de-duplication through the ledger."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import numpy as np
import pytest

from model.data import Views
from postclf_errors import InvalidInputError
from store.ledger import Ledger
from store.pool import ROW, Pool, id_hashes
from store.posts import PostBatch, record_posts


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


def read_all(pool: Pool, chunk_rows: int = 4) -> tuple[list[str], Views]:
    """Every row, chunk by chunk, in segment order (what a scorer sees)."""
    got_ids: list[str] = []
    parts = []
    for ref in pool.chunks(pool.segments(), chunk_rows):
        parts.append(pool.load(ref).views)
        got_ids += pool.ids(ref.segment, np.arange(ref.start, ref.stop))
    return got_ids, Views.concat(parts)


def ns(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1e9)


def test_round_trip_in_chunks_with_missing_views(tmp_path):
    pool = Pool(tmp_path, segment_rows=8)
    v, w = make_views(10, 0), make_views(3, 1)
    before = [v.image.copy(), v.text.copy()]
    assert pool.append(ids("a", 10), v) == 10
    # the caller's arrays are untouched: missing rows stay zeros (NaN is on disk only), and a
    # full view (text) is written straight from them
    np.testing.assert_array_equal(v.image, before[0])
    np.testing.assert_array_equal(v.text, before[1])
    pool.append(ids("b", 3), w)  # the first segment is full: a second one is opened
    assert len(pool.segments()) == 2 and len(pool) == 13
    got_ids, got = read_all(pool)
    assert got_ids == ids("a", 10) + ids("b", 3)
    same(got, Views.concat([v, w]))
    assert not got.image_mask[0] and got.image[0].sum() == 0.0


def test_chunk_carries_hashes_and_arrival(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 5), make_views(5, 0), arrived_ns=ns("2026-11-30"))
    (ref,) = pool.chunks(pool.segments(), 100)
    chunk = pool.load(ref)
    np.testing.assert_array_equal(chunk.hashes, id_hashes(ids("a", 5)))
    assert (chunk.arrived_ns == ns("2026-11-30")).all()


def test_appended_rows_are_on_disk_when_append_returns(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 5), make_views(5, 0))  # no flush, no close: a crash right here
    again = Pool(tmp_path)
    assert len(again) == 5
    assert read_all(again)[0] == ids("a", 5)


def test_a_torn_tail_is_ignored_and_a_new_writer_carries_on(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 3), make_views(3, 0))
    (seg,) = pool.segments()
    folder = tmp_path / seg.path
    with open(folder / "image.bin", "ab") as f:  # a crash mid-append: data without a record
        f.write(b"\x01" * 40)
    with open(folder / "rows.bin", "ab") as f:  # and half a record
        f.write(b"\x02" * (ROW.itemsize // 2))
    again = Pool(tmp_path)
    assert len(again) == 3 and read_all(again)[0] == ids("a", 3)
    again.append(ids("b", 2), make_views(2, 1))  # a new process: a new segment
    assert sorted(read_all(Pool(tmp_path))[0]) == sorted(ids("a", 3) + ids("b", 2))


def test_a_record_without_its_data_is_not_counted(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 3), make_views(3, 0))
    (seg,) = pool.segments()
    folder = tmp_path / seg.path
    rec = np.fromfile(folder / "rows.bin", ROW)
    with open(folder / "rows.bin", "ab") as f:  # a record whose data never reached the disk
        f.write(rec[:1].tobytes())
    assert len(Pool(tmp_path)) == 3


def test_days_are_partitions_and_expiry_keeps_labeled_rows(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("old", 4), make_views(4, 0), arrived_ns=ns("2026-11-01"))
    pool.append(ids("new", 2), make_views(2, 1), arrived_ns=ns("2026-11-20"))
    assert pool.days() == ["2026-11-01", "2026-11-20"]
    keep = np.unique(id_hashes(["old2"]))  # labeled: its embedding must outlive its day
    assert pool.expire(date(2026, 11, 10), keep) == 3
    assert pool.days() == ["2026-11-20"]
    assert not list(tmp_path.glob(".trash-*"))
    found, views = pool.get(["old2", "old1", "new0"])
    assert found.tolist() == ["old2", "new0"]
    same(views.take(np.array([0])), make_views(4, 0).take(np.array([2])))
    kept = [s for s in pool.segments() if s.day is None]
    assert len(kept) == 1 and kept[0].rows == 1
    assert [s.day for s in pool.segments(include_kept=False)] == ["2026-11-20"]


def test_an_interrupted_delete_is_finished_on_open(tmp_path):
    Pool(tmp_path)
    (tmp_path / ".trash-2026-11-01-abcd" / "seg-x").mkdir(parents=True)
    Pool(tmp_path)
    assert not list(tmp_path.glob(".trash-*"))


def test_one_long_id_costs_only_its_bytes(tmp_path):
    pool = Pool(tmp_path)
    long_id = "x" * 16_384
    pool.append([*ids("a", 3), long_id], make_views(4, 0))
    (seg,) = pool.segments()
    assert (tmp_path / seg.path / "ids.bin").stat().st_size == 3 * 2 + 16_384
    assert pool.ids(seg.path, np.array([3, 0])) == [long_id, "a0"]
    assert pool.get([long_id])[0].tolist() == [long_id]


def test_get_returns_requested_order_and_skips_unknown(tmp_path):
    pool = Pool(tmp_path, segment_rows=4)
    v = make_views(6, 0)
    pool.append(ids("a", 4), v.take(np.arange(4)))
    pool.append(ids("a", 6)[4:], v.take(np.arange(4, 6)))
    found, got = pool.get(["a5", "nope", "a0", "a5"])
    assert found.tolist() == ["a5", "a0"]
    same(got, v.take(np.array([5, 0])))
    assert pool.get(["nope"])[0].tolist() == []


def test_dimension_mismatch_is_invalid_input(tmp_path):
    Pool(tmp_path).append(ids("a", 2), make_views(2, 0))
    with pytest.raises(InvalidInputError) as err:
        Pool(tmp_path).append(ids("b", 2), make_views(2, 0, img_dim=5))
    assert err.value.field == "image"


def test_batch_without_a_view_is_stored_as_missing(tmp_path):
    pool = Pool(tmp_path)
    pool.append(ids("a", 2), make_views(2, 0))
    pool.append(ids("b", 2), Views.from_nan_rows(None, np.ones((2, 3), np.float32)))
    assert read_all(pool)[1].image_mask.tolist()[2:] == [False, False]


def test_empty_pool(tmp_path):
    pool = Pool(tmp_path)
    assert len(pool) == 0 and pool.segments() == []
    assert pool.get(["a"])[0].tolist() == []


def test_float16_pool_round_trips_and_rejects_what_it_cannot_store(tmp_path):
    pool = Pool(tmp_path, dtype="float16")
    v = make_views(5, 0)
    pool.append(ids("a", 5), v)
    _, got = read_all(Pool(tmp_path))  # the dtype is the pool's, read from its meta
    np.testing.assert_allclose(got.text, v.text, rtol=1e-3, atol=1e-3)
    big = Views.from_nan_rows(None, np.array([[1.0, 2.0, 3.0], [1.0, 7e4, 0.0]], np.float32))
    with pytest.raises(InvalidInputError) as err:
        pool.check(big)
    assert err.value.field == "posts[1].text"


def test_several_writers_on_one_folder(tmp_path):
    a, b = Pool(tmp_path), Pool(tmp_path)  # e.g. two server processes
    a.append(["p", "q"], make_views(2, 0))
    b.append(["r"], make_views(1, 1))
    assert sorted(read_all(Pool(tmp_path))[0]) == ["p", "q", "r"]


def test_concurrent_appends_lose_nothing(tmp_path):
    pool = Pool(tmp_path, segment_rows=7)

    def work(t: int) -> None:
        for k in range(10):
            pool.append([f"t{t}-{k}-{i}" for i in range(5)], make_views(5, t * 100 + k))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got_ids, got = read_all(Pool(tmp_path))
    assert len(got_ids) == len(set(got_ids)) == 4 * 10 * 5
    assert got.image_mask.sum() < len(got_ids)  # missing views survived the round trip


def test_record_posts_pools_a_post_once_and_ledgers_it_after(tmp_path):
    pool, ledger = Pool(tmp_path / "pool"), Ledger(tmp_path / "ledger.db")
    try:
        first = record_posts(pool, ledger, PostBatch(["x", "y"], make_views(2, 0), "ingest"))
        again = record_posts(pool, ledger, PostBatch(["y", "z"], make_views(2, 5), "ingest"))
        assert first.tolist() == [True, True] and again.tolist() == [False, True]
        got_ids, got = read_all(pool)
        assert got_ids == ["x", "y", "z"]
        same(got.take(np.arange(2)), make_views(2, 0))  # the first embedding of y stays
        assert ledger.known_posts(["x", "y", "z"]).all()
    finally:
        ledger.close()


def test_record_posts_keeps_the_latest_prediction_of_fresh_and_known_posts(tmp_path):
    """Fresh rows get their prediction from the INSERT alone; known rows from the UPDATE."""
    pool, ledger = Pool(tmp_path / "pool"), Ledger(tmp_path / "ledger.db")
    try:
        batch = PostBatch(["x", "y"], make_views(2, 0), "classify", ["A", "B"], "v1")
        record_posts(pool, ledger, batch)
        batch = PostBatch(["y", "z"], make_views(2, 5), "classify", ["C", "D"], "v2")
        record_posts(pool, ledger, batch)
        got = ledger._read("SELECT post_id, predicted_label, model_version FROM posts")
        assert sorted(got) == [("x", "A", "v1"), ("y", "C", "v2"), ("z", "D", "v2")]
    finally:
        ledger.close()


def test_dims_fixed_by_another_process_are_enforced(tmp_path):
    stale = Pool(tmp_path)  # opened before anything was written
    Pool(tmp_path).append(ids("a", 2), make_views(2, 0))  # another process fixes the dims
    with pytest.raises(InvalidInputError):
        stale.append(ids("b", 2), make_views(2, 0, txt_dim=5))
