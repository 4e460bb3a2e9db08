"""The ledger: posts, labels, queries, model versions, job runs and named locks in one SQLite file.

Thread-safe: each thread gets its own connection (WAL lets readers run beside one writer);
every write is one `BEGIN IMMEDIATE` transaction, batch writes use `executemany`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from postclf_errors import InvalidInputError, NotFoundError
from store.records import (
    JobRun,
    LabelCounts,
    LabelRow,
    ModelRecord,
    QueryItem,
    QueryRecord,
)
from store.schema import migrate

__all__ = [
    "JobRun",
    "LabelCounts",
    "LabelRow",
    "Ledger",
    "ModelRecord",
    "QueryItem",
    "QueryRecord",
    "hash_holdout",
    "now_iso",
]

SOURCES = ("classify", "ingest", "seed")
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_CHUNK = 500  # host parameters per IN (...) query, well under SQLite's limit


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def hash_holdout(post_id: str, fraction: float) -> bool:
    """Stable pseudo-random holdout draw: the first 8 bytes of sha1(post_id) as a uniform [0, 1)."""
    h = int.from_bytes(hashlib.sha1(post_id.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


class Ledger:
    """SQLite ledger. `synchronous="FULL"` fsyncs the WAL on every commit (labels survive a
    power loss); "NORMAL" survives a process crash only. See bench/ledger.py for the cost."""

    def __init__(
        self, path: Path | str, synchronous: str = "FULL", holdout_fraction: float = 0.15
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise InvalidInputError(f"must be one of {SYNCHRONOUS}", "synchronous")
        if not 0.0 <= holdout_fraction < 1.0:
            raise InvalidInputError("must be in [0, 1)", "holdout_fraction")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous.upper()
        self.holdout_fraction = holdout_fraction
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Operations in flight, so that close() never closes a connection another thread is
        # using (sqlite3 with check_same_thread=False: that is a segfault, not an error).
        self._busy = 0
        self._idle = threading.Condition()
        self.schema_version = migrate(self._conn())

    # -- connections --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, counted as in use until the block ends."""
        with self._idle:
            self._busy += 1
        try:
            yield self._conn()
        finally:
            with self._idle:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.notify_all()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so that read-then-write cannot race."""
        with self._using() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._using() as conn:
            return conn.execute(sql, params).fetchall()

    def close(self, timeout: float = 30.0) -> None:
        """Close every thread's connection once no operation is in flight (a later call opens
        a fresh one). An operation still running after `timeout` s is a bug: raise."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._busy == 0, timeout):
                raise RuntimeError(f"ledger still in use after {timeout} s; not closed")
            with self._conns_lock:
                for conn in self._conns:
                    conn.close()
                self._conns.clear()
            self._local = threading.local()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- posts --------------------------------------------------------------------------------
    def add_posts(
        self,
        post_ids: Sequence[str],
        source: str,
        *,
        predicted_labels: Sequence[str | None] | None = None,
        model_version: str | None = None,
        holdout: Sequence[bool] | bool | None = None,
        known: Sequence[bool] | None = None,
    ) -> int:
        """Record posts; returns how many were new. A known post keeps its arrival, source and
        holdout flag (fixed at first insert); only its latest prediction is updated.

        `known (n,)`: which posts the caller found in the ledger just before; only those get
        the prediction UPDATE (a fresh row already has it from its INSERT), and only the
        others are INSERTed. A post another writer inserted in between keeps that writer's
        equally fresh prediction."""
        if source not in SOURCES:
            raise InvalidInputError(f"must be one of {SOURCES}", "source")
        n = len(post_ids)
        preds = list(predicted_labels) if predicted_labels is not None else [None] * n
        seen = [False] * n if known is None else list(known)
        if len(preds) != n or len(seen) != n:
            raise InvalidInputError("length differs from post_ids", "predicted_labels/known")
        if isinstance(holdout, bool | np.bool_):
            flags = [bool(holdout)] * n
        elif holdout is None:  # drawn only for the rows to INSERT (a known row keeps its own)
            flags = [
                not k and hash_holdout(p, self.holdout_fraction)
                for p, k in zip(post_ids, seen, strict=True)
            ]
        else:
            flags = [bool(h) for h in holdout]
        if len(flags) != n:
            raise InvalidInputError("length differs from post_ids", "holdout")
        at = now_iso()
        rows = [
            (str(p), at, source, lab, model_version, int(h))
            for p, lab, h in zip(post_ids, preds, flags, strict=True)
        ]
        # A post the caller found known is not INSERTed again (OR IGNORE would skip it anyway);
        # one another writer inserted since `known` was read is still ignored, not duplicated.
        fresh = [r for r, k in zip(rows, seen, strict=True) if not k]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO posts VALUES (?, ?, ?, ?, ?, ?)", fresh)
            added = conn.total_changes - before
            if predicted_labels is not None:
                stale = rows if known is None else [r for r, k in zip(rows, seen, strict=True) if k]
                conn.executemany(
                    "UPDATE posts SET predicted_label = ?, model_version = ? WHERE post_id = ?",
                    [(r[3], model_version, r[0]) for r in stale],
                )
        return added

    def known_posts(self, post_ids: Sequence[str]) -> np.ndarray:
        """`(n,)` bool: which of `post_ids` the ledger has seen."""
        found: set[str] = set()
        for part in _chunks(list(post_ids)):
            q = f"SELECT post_id FROM posts WHERE post_id IN ({_marks(part)})"
            found.update(r[0] for r in self._read(q, part))
        return np.array([p in found for p in post_ids], dtype=bool)

    def holdout_flags(self, post_ids: Sequence[str]) -> np.ndarray:
        """`(n,)` bool holdout flag per post; NotFoundError for a post the ledger lacks."""
        flags: dict[str, bool] = {}
        for part in _chunks(list(post_ids)):
            q = f"SELECT post_id, holdout FROM posts WHERE post_id IN ({_marks(part)})"
            flags.update((r[0], bool(r[1])) for r in self._read(q, part))
        missing = [p for p in post_ids if p not in flags]
        if missing:
            raise NotFoundError(f"unknown post_id {missing[0]!r} (+{len(missing) - 1} more)")
        return np.array([flags[p] for p in post_ids], dtype=bool)

    def post_count(self) -> int:
        return self._read("SELECT COUNT(*) FROM posts")[0][0]

    # -- labels -------------------------------------------------------------------------------
    def add_labels(self, items: Sequence[LabelRow]) -> LabelCounts:
        """Store labels durably in one transaction (committed before returning).

        Same label from the same assessor again = duplicate (no write); a different label from
        the same assessor = a correction that replaces it (counted as accepted). Posts must
        exist (foreign key); callers validate first (see batch_jobs.labels).
        """
        with self._write() as conn:
            current = self._current_labels(conn, items)
            fresh, duplicates, corrections = [], 0, 0
            at = now_iso()
            for it in items:
                key = (it.post_id, it.assessor_id)
                old = current.get(key)
                if old == it.label:
                    duplicates += 1
                    continue
                corrections += old is not None
                current[key] = it.label
                fresh.append((it.post_id, it.assessor_id, it.label, it.query_id, at))
            conn.executemany(
                "INSERT OR REPLACE INTO labels (post_id, assessor_id, label, query_id, "
                "received_at) VALUES (?, ?, ?, ?, ?)",
                fresh,
            )
        return LabelCounts(len(fresh), duplicates, corrections)

    @staticmethod
    def _current_labels(
        conn: sqlite3.Connection, items: Sequence[LabelRow]
    ) -> dict[tuple[str, str], str]:
        post_ids = sorted({it.post_id for it in items})
        out: dict[tuple[str, str], str] = {}
        for part in _chunks(post_ids):
            q = f"SELECT post_id, assessor_id, label FROM labels WHERE post_id IN ({_marks(part)})"
            out.update(((r[0], r[1]), r[2]) for r in conn.execute(q, part))
        return out

    def labels(self, since_seq: int = 0) -> list[tuple[str, str, str, bool]]:
        """`(post_id, assessor_id, label, holdout)` of every stored label with seq > since_seq."""
        return self._read(
            "SELECT l.post_id, l.assessor_id, l.label, p.holdout FROM labels l "
            "JOIN posts p USING (post_id) WHERE l.seq > ? ORDER BY l.seq",
            (since_seq,),
        )

    def label_seq(self) -> int:
        """High-water mark of label writes (grows on every new label and correction)."""
        return self._read("SELECT COALESCE(MAX(seq), 0) FROM labels")[0][0]

    def count_labels_since(self, seq: int) -> int:
        return self._read("SELECT COUNT(*) FROM labels WHERE seq > ?", (seq,))[0][0]

    # Non-holdout posts with at least one label: what training learns from (gate posts never).
    _LABELED_TRAIN = "FROM labels l JOIN posts p USING (post_id) WHERE p.holdout = 0"

    def labeled_train_posts(self) -> int:
        """Distinct labeled training posts (a post labeled by three assessors counts once)."""
        return self._read(f"SELECT COUNT(DISTINCT l.post_id) {self._LABELED_TRAIN}")[0][0]

    def labeled_train_post_ids(self, limit: int) -> list[str]:
        """At most `limit` of the posts `labeled_train_posts` counts."""
        rows = self._read(f"SELECT DISTINCT l.post_id {self._LABELED_TRAIN} LIMIT ?", (limit,))
        return [r[0] for r in rows]

    def labeled_post_ids(self) -> set[str]:
        return {r[0] for r in self._read("SELECT DISTINCT post_id FROM labels")}

    # -- queries ------------------------------------------------------------------------------
    def create_query(
        self,
        query_id: str,
        night: str,
        model_version: str | None,
        strategy: str,
        params: dict[str, Any],
        items: Sequence[QueryItem],
        export_path: str | None = None,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO queries VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
                (
                    query_id,
                    night,
                    now_iso(),
                    model_version,
                    strategy,
                    json.dumps(params),
                    export_path,
                ),
            )
            conn.executemany(
                "INSERT INTO query_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        query_id,
                        it.rank,
                        it.post_id,
                        float(it.score),
                        it.predicted_label,
                        None if it.confidence is None else float(it.confidence),
                        it.reason,
                        it.kind,
                        it.gold_label,
                    )
                    for it in items
                ],
            )

    def set_query_export(self, query_id: str, export_path: str) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE queries SET export_path = ? WHERE query_id = ?", (export_path, query_id)
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"unknown query_id {query_id!r}")

    _QUERY_SELECT = (
        "SELECT q.query_id, q.night, q.created_at, q.model_version, q.strategy, q.params, "
        "q.status, q.export_path, (SELECT COUNT(*) FROM query_items i "
        "WHERE i.query_id = q.query_id) FROM queries q"
    )

    def get_query(self, query_id: str) -> QueryRecord:
        rows = self._read(f"{self._QUERY_SELECT} WHERE q.query_id = ?", (query_id,))
        if not rows:
            raise NotFoundError(f"unknown query_id {query_id!r}")
        return _query_record(rows[0])

    def query_for_night(self, night: str) -> QueryRecord | None:
        rows = self._read(
            f"{self._QUERY_SELECT} WHERE q.night = ? ORDER BY q.created_at LIMIT 1", (night,)
        )
        return _query_record(rows[0]) if rows else None

    def list_queries(self, status: str | None = None, limit: int = 100) -> list[QueryRecord]:
        """Newest first."""
        where, params = ("WHERE q.status = ?", [status]) if status else ("", [])
        rows = self._read(
            f"{self._QUERY_SELECT} {where} ORDER BY q.created_at DESC LIMIT ?", [*params, limit]
        )
        return [_query_record(r) for r in rows]

    def query_items(self, query_id: str) -> list[QueryItem]:
        rows = self._read(
            "SELECT rank, post_id, score, predicted_label, confidence, reason, kind, gold_label "
            "FROM query_items WHERE query_id = ? ORDER BY rank",
            (query_id,),
        )
        return [QueryItem(*r) for r in rows]

    def answers_by_reason(self, reason: str) -> list[tuple[str | None, int, int]]:
        """`(model_version, answers, agreeing)` per query model: labels given to query items
        asked with `reason`, and how many equal the label that model predicted at query time."""
        return self._read(
            "SELECT q.model_version, COUNT(*), SUM(l.label = i.predicted_label) FROM labels l "
            "JOIN query_items i ON i.query_id = l.query_id AND i.post_id = l.post_id "
            "JOIN queries q ON q.query_id = i.query_id "
            "WHERE i.reason = ? GROUP BY q.model_version ORDER BY q.model_version",
            (reason,),
        )

    def control_answers(self) -> list[tuple[str, str, str, str]]:
        """`(post_id, assessor_id, answer, gold_label)` of every label given to a control item
        of the query it names (the label's query_id)."""
        return self._read(
            "SELECT l.post_id, l.assessor_id, l.label, i.gold_label FROM labels l "
            "JOIN query_items i ON i.query_id = l.query_id AND i.post_id = l.post_id "
            "WHERE i.kind = 'control' ORDER BY l.seq"
        )

    def excluded_post_ids(self) -> Iterator[str]:
        """Labeled posts and posts in open queries (the nightly never re-queries them),
        streamed from one cursor so no caller needs them all in memory as strings."""
        with self._using() as conn:
            cur = conn.execute(
                "SELECT post_id FROM labels UNION SELECT i.post_id FROM query_items i "
                "JOIN queries q USING (query_id) WHERE q.status = 'open'"
            )
            yield from (post_id for (post_id,) in cur)

    def posts_in_open_queries(self) -> set[str]:
        return {
            r[0]
            for r in self._read(
                "SELECT DISTINCT i.post_id FROM query_items i JOIN queries q USING (query_id) "
                "WHERE q.status = 'open'"
            )
        }

    def close_queries(self, created_before: str) -> list[str]:
        """Close open queries created before the ISO timestamp; returns their ids."""
        with self._write() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT query_id FROM queries WHERE status = 'open' AND created_at < ?",
                    (created_before,),
                )
            ]
            conn.executemany(
                "UPDATE queries SET status = 'closed' WHERE query_id = ?", [(i,) for i in ids]
            )
        return ids

    # -- models -------------------------------------------------------------------------------
    def record_model(
        self,
        version: str,
        parent: str | None,
        status: str,
        metrics: dict[str, Any],
        reason: str | None = None,
        label_seq: int = 0,
    ) -> None:
        """Insert or replace the ledger's record of a registry version."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version, parent, status, json.dumps(metrics), reason, now_iso(), label_seq),
            )

    def get_model(self, version: str) -> ModelRecord | None:
        rows = self._read("SELECT * FROM models WHERE version = ?", (version,))
        return _model_record(rows[0]) if rows else None

    def list_models(self) -> list[ModelRecord]:
        return [_model_record(r) for r in self._read("SELECT * FROM models ORDER BY version")]

    # -- job runs -----------------------------------------------------------------------------
    def start_job(self, job: str) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO job_runs (job, started_at, status) VALUES (?, ?, 'running')",
                (job, now_iso()),
            )
            return int(cur.lastrowid or 0)

    def finish_job(self, run_id: int, status: str, report: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE job_runs SET finished_at = ?, status = ?, report = ? WHERE id = ?",
                (now_iso(), status, json.dumps(report, default=str), run_id),
            )

    def job_runs(self, job: str | None = None, limit: int = 50) -> list[JobRun]:
        """Newest first."""
        where, params = ("WHERE job = ?", [job]) if job else ("", [])
        rows = self._read(
            f"SELECT * FROM job_runs {where} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [
            JobRun(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None) for r in rows
        ]

    def abandon_running_jobs(self, job: str, status: str = "abandoned") -> list[int]:
        """Mark `job`'s runs still recorded as `running` as `status`; returns their ids.

        Only the lease holder calls this: with the lease held, no other run of `job` is alive,
        so a `running` row is the record of a run whose process died (or was cancelled)."""
        with self._write() as conn:
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM job_runs WHERE job = ? AND status = 'running'", (job,)
                )
            ]
            conn.executemany(
                "UPDATE job_runs SET finished_at = ?, status = ? WHERE id = ?",
                [(now_iso(), status, i) for i in ids],
            )
        return ids

    # -- locks --------------------------------------------------------------------------------
    def acquire_lock(
        self,
        name: str,
        owner: str,
        ttl_s: float,
        takeover: Callable[[str], bool] | None = None,
    ) -> bool:
        """Take (or renew, if `owner` holds it) the named lock; an expired lock is taken over,
        and so is a live one whose owner `takeover(owner)` says is gone. One transaction."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT owner, expires_at FROM locks WHERE name = ?", (name,)
            ).fetchone()
            held = row is not None and row[0] != owner and row[1] > now
            if held and (takeover is None or not takeover(row[0])):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO locks VALUES (?, ?, ?)", (name, owner, now + ttl_s)
            )
            return True

    def renew_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend the lock only while `owner` still holds it (never re-takes a lost one)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE locks SET expires_at = ? WHERE name = ? AND owner = ?",
                (time.time() + ttl_s, name, owner),
            )
            return cur.rowcount > 0

    def release_lock(self, name: str, owner: str) -> bool:
        """Release if `owner` holds it; returns whether anything was released."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))
            return cur.rowcount > 0

    def lock_holder(self, name: str) -> tuple[str, float] | None:
        """`(owner, expires_at)` of a live lock, None if free or expired."""
        rows = self._read("SELECT owner, expires_at FROM locks WHERE name = ?", (name,))
        if rows and rows[0][1] > time.time():
            return rows[0][0], rows[0][1]
        return None


def _chunks(items: list[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(part: Sequence[Any]) -> str:
    return ",".join("?" * len(part))


def _query_record(r: tuple) -> QueryRecord:
    return QueryRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8])


def _model_record(r: tuple) -> ModelRecord:
    return ModelRecord(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6])
