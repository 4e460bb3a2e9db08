"""Pool writer without a network: group commit, per-call new-post counts, drain on close."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.data import Views
from server.metrics import Metrics
from server.poolwriter import PoolBatch, PoolWriter, write_group
from store.ledger import Ledger
from store.pool import Pool


def views(n: int, seed: int) -> Views:
    rng = np.random.default_rng(seed)
    return Views.from_nan_rows(rng.normal(size=(n, 3)).astype(np.float32), None)


def batch(ids: list[str], seed: int, source: str = "ingest") -> PoolBatch:
    return PoolBatch(np.asarray(ids, dtype=object), views(len(ids), seed), None, None, source)


def all_ids(pool: Pool) -> list[str]:
    return [i for s in pool.segments() for i in pool.ids(s.path, np.arange(s.rows))]


def stores(tmp: Path) -> tuple[Pool, Ledger]:
    return Pool(tmp / "pool"), Ledger(tmp / "ledger.sqlite")


def test_group_write_counts_a_post_sent_twice_once(tmp_path: Path) -> None:
    pool, ledger = stores(tmp_path)
    counts = write_group(pool, ledger, [batch(["a", "b"], 0), batch(["b", "c"], 1)])
    assert counts == [2, 1]  # "b" is new for the first call only
    assert write_group(pool, ledger, [batch(["a", "d"], 2)]) == [1]
    assert sorted(all_ids(pool)) == ["a", "b", "c", "d"]  # once each
    pool.close()


def test_futures_resolve_durably_and_close_drains(tmp_path: Path) -> None:
    pool, ledger = stores(tmp_path)
    writer = PoolWriter(pool, ledger, Metrics(), max_pending=4)
    futures = [writer.submit(batch([f"p{i}", f"q{i}"], i)) for i in range(10)]
    writer.close()  # drains everything queued before it returns
    assert [f.result(0) for f in futures] == [2] * 10
    reopened = Pool(tmp_path / "pool")
    assert len(all_ids(reopened)) == 20
    reopened.close()


def test_a_failed_write_fails_its_futures_not_the_writer(tmp_path: Path) -> None:
    pool, ledger = stores(tmp_path)
    writer = PoolWriter(pool, ledger, Metrics(), max_pending=4)
    assert writer.submit(batch(["a"], 0)).result(10) == 1
    wide = PoolBatch(
        np.asarray(["w"], dtype=object),
        Views.from_nan_rows(np.ones((1, 5), np.float32), None),  # the pool's dims are fixed at 3
        None,
        None,
        "ingest",
    )
    bad = writer.submit(wide)
    assert bad.exception(10) is not None
    assert writer.submit(batch(["b"], 1)).result(10) == 1  # the writer goes on
    writer.close()
