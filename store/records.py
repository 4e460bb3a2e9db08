"""Plain records the ledger takes and returns (no SQLite here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelRow:
    """One assessor's label (a class name) for one post: what an assessor submits (through
    any door: RPC, file import, bootstrap) and what the ledger stores."""

    post_id: str
    assessor_id: str
    label: str
    query_id: str | None = None


@dataclass(frozen=True)
class LabelCounts:
    """Outcome of `add_labels`: `accepted` includes `corrections` (a changed label replaces)."""

    accepted: int
    duplicates: int
    corrections: int


@dataclass(frozen=True)
class QueryItem:
    rank: int
    post_id: str
    score: float
    predicted_label: str | None
    confidence: float | None
    reason: str | None
    kind: str = "new"  # new | relabel (an unsure label asked again) | control (known answer)
    gold_label: str | None = None  # control items: the known answer (never exported)


@dataclass(frozen=True)
class QueryRecord:
    query_id: str
    night: str
    created_at: str
    model_version: str | None
    strategy: str
    params: dict[str, Any]
    status: str
    export_path: str | None
    n_items: int


@dataclass(frozen=True)
class ModelRecord:
    version: str
    parent: str | None
    status: str  # candidate | promoted | rejected
    metrics: dict[str, Any]
    reason: str | None
    created_at: str
    label_seq: int


@dataclass(frozen=True)
class JobRun:
    id: int
    job: str
    started_at: str
    finished_at: str | None
    status: str
    report: dict[str, Any] | None
