"""Ledger schema as an ordered list of migrations; `PRAGMA user_version` = migrations applied."""

from __future__ import annotations

import sqlite3

# Append only: never edit a migration that has shipped, add the next one instead.
MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE posts (
        post_id         TEXT PRIMARY KEY,
        arrived_at      TEXT NOT NULL,
        source          TEXT NOT NULL CHECK (source IN ('classify', 'ingest', 'seed')),
        predicted_label TEXT,
        model_version   TEXT,
        holdout         INTEGER NOT NULL CHECK (holdout IN (0, 1))
    );
    CREATE TABLE labels (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- grows on every insert or correction
        post_id     TEXT NOT NULL REFERENCES posts(post_id),
        assessor_id TEXT NOT NULL,
        label       TEXT NOT NULL,
        query_id    TEXT,
        received_at TEXT NOT NULL,
        UNIQUE (post_id, assessor_id)
    );
    CREATE TABLE queries (
        query_id      TEXT PRIMARY KEY,
        night         TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        model_version TEXT,
        strategy      TEXT NOT NULL,
        params        TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('open', 'closed')),
        export_path   TEXT
    );
    CREATE INDEX queries_night ON queries(night);
    CREATE INDEX queries_status ON queries(status);
    CREATE TABLE query_items (
        query_id        TEXT NOT NULL REFERENCES queries(query_id),
        rank            INTEGER NOT NULL,
        post_id         TEXT NOT NULL,
        score           REAL NOT NULL,
        predicted_label TEXT,
        confidence      REAL,
        reason          TEXT,
        PRIMARY KEY (query_id, rank)
    );
    CREATE INDEX query_items_post ON query_items(post_id);
    CREATE TABLE models (
        version    TEXT PRIMARY KEY,
        parent     TEXT,
        status     TEXT NOT NULL CHECK (status IN ('candidate', 'promoted', 'rejected')),
        metrics    TEXT NOT NULL,
        reason     TEXT,
        created_at TEXT NOT NULL,
        label_seq  INTEGER NOT NULL DEFAULT 0  -- labels.seq high-water mark it was trained on
    );
    CREATE TABLE job_runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job         TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        status      TEXT NOT NULL,
        report      TEXT
    );
    CREATE TABLE locks (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at REAL NOT NULL  -- unix seconds
    );
    """,
    # 2: assessors as people. A query item is a new post, a re-ask of an unsure label, or a
    # control post with a known answer (never marked as such in the export).
    """
    ALTER TABLE query_items ADD COLUMN kind TEXT NOT NULL DEFAULT 'new'
        CHECK (kind IN ('new', 'relabel', 'control'));
    ALTER TABLE query_items ADD COLUMN gold_label TEXT;  -- control items: the known answer
    CREATE INDEX query_items_kind ON query_items(kind);
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the file lacks, each in its own transaction; returns the version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"ledger schema version {version} is newer than this code ({len(MIGRATIONS)})"
            )
        for i in range(version, len(MIGRATIONS)):
            for statement in _statements(MIGRATIONS[i]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return [s for s in out if s]
