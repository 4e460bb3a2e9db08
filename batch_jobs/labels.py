"""Validate assessor labels and store the valid ones durably; every bad item is reported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from store.ledger import LabelRow, Ledger

__all__ = ["LabelRow", "Rejection", "SubmitResult", "submit_labels"]
MAX_ASSESSOR_BYTES = 128  # as the RPC's limit: every door into the ledger checks it


@dataclass(frozen=True)
class Rejection:
    index: int  # position in the submitted list
    post_id: str
    field: str  # e.g. "labels[3].label"
    reason: str


@dataclass(frozen=True)
class SubmitResult:
    accepted: int  # new labels and corrections (a changed label from the same assessor)
    duplicates: int  # the same label from the same assessor again: stored once
    rejected: list[Rejection]
    corrections: int = 0  # part of `accepted`


def _check(i: int, item: LabelRow, classes: set[str], known: bool) -> Rejection | None:
    where = f"labels[{i}]"
    if not item.post_id:
        return Rejection(i, item.post_id, f"{where}.post_id", "empty post_id")
    if not known:
        return Rejection(i, item.post_id, f"{where}.post_id", "unknown post_id")
    if item.label not in classes:
        return Rejection(i, item.post_id, f"{where}.label", f"unknown class {item.label!r}")
    if not item.assessor_id or not item.assessor_id.strip():
        return Rejection(i, item.post_id, f"{where}.assessor_id", "empty assessor_id")
    if len(item.assessor_id.encode()) > MAX_ASSESSOR_BYTES:
        why = f"assessor_id longer than {MAX_ASSESSOR_BYTES} bytes"
        return Rejection(i, item.post_id, f"{where}.assessor_id", why)
    if not item.assessor_id.strip().isprintable():  # ids reach logs and metric labels
        return Rejection(i, item.post_id, f"{where}.assessor_id", "control characters")
    return None


def submit_labels(
    ledger: Ledger, classes: Sequence[str], labels: Sequence[LabelRow]
) -> SubmitResult:
    """Reject unknown posts, unknown classes and empty assessors, and a second, different label
    from the same assessor for the same post within one call (so that `accepted` counts rows
    actually stored); store the rest in one durable transaction. A bad item never costs a good
    one its place."""
    known = ledger.known_posts([lab.post_id for lab in labels])
    class_set = set(classes)
    rejected, rows = [], []
    first: dict[tuple[str, str], tuple[int, str]] = {}  # (post, assessor) → (index, label)
    for i, item in enumerate(labels):
        bad = _check(i, item, class_set, bool(known[i]))
        key = (item.post_id, item.assessor_id.strip())
        if bad is None and key in first and first[key][1] != item.label:
            j = first[key][0]
            bad = Rejection(
                i, item.post_id, f"labels[{i}].label", f"conflicts with labels[{j}] in this call"
            )
        if bad is not None:
            rejected.append(bad)
        else:
            first.setdefault(key, (i, item.label))
            rows.append(LabelRow(item.post_id, key[1], item.label, item.query_id or None))
    if not rows:
        return SubmitResult(0, 0, rejected)
    counts = ledger.add_labels(rows)
    return SubmitResult(counts.accepted, counts.duplicates, rejected, counts.corrections)
