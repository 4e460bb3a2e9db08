"""Label files assessors send back: our `query.csv` with `label` and `assessor_id` filled in
(or any CSV with `post_id,label,assessor_id[,query_id]`), or Label Studio's JSON export.

`read_labels_file` returns the labels it could read and one reason per row it could not, so a
bad row never costs a good one; a file it cannot read at all raises InvalidInputError naming it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from batch_jobs.label_studio import MAX_ASSESSOR_BYTES, read_export
from postclf_errors import InvalidInputError
from store.records import LabelRow

REQUIRED = ("post_id", "label", "assessor_id")
MAX_FILE_BYTES = 512 * 1024 * 1024


def read_labels_file(path: Path) -> tuple[list[LabelRow], list[str]]:
    """`(labels, problems)` from a `.csv` or a Label Studio `.json` export."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}", "file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidInputError(f"larger than {MAX_FILE_BYTES} bytes", "file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"cannot read {path}: {err}", "file") from err
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"{path} is not JSON: {err}", "file") from err
        labels, problems = read_export(doc)
        if not isinstance(doc, list):
            raise InvalidInputError(problems[0], "file")
        return labels, problems
    return read_csv(text, str(path))


def read_csv(text: str, name: str = "file") -> tuple[list[LabelRow], list[str]]:
    """Rows of a labels CSV; a row without a label is reported as not answered."""
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidInputError(
            f"{name} lacks the column(s) {missing} (needs {list(REQUIRED)}, query_id optional)",
            "file",
        )
    labels, problems = [], []
    for line, row in enumerate(reader, start=2):
        got, why = _row(row)
        if got is None:
            problems.append(f"line {line}: {why}")
        else:
            labels.append(got)
    return labels, problems


def _row(row: dict[str, str | None]) -> tuple[LabelRow | None, str]:
    if None in row:
        return None, "more fields than the header"
    post_id, label = (row.get("post_id") or "").strip(), (row.get("label") or "").strip()
    assessor = (row.get("assessor_id") or "").strip()
    if not post_id:
        return None, "post_id is empty"
    if not label:
        return None, f"label is empty for post {post_id!r} (not answered)"
    if not assessor:
        return None, f"assessor_id is empty for post {post_id!r}"
    if len(assessor.encode()) > MAX_ASSESSOR_BYTES:
        return None, f"assessor_id longer than {MAX_ASSESSOR_BYTES} bytes"
    if not assessor.isprintable():
        return None, "assessor_id has control characters"
    return LabelRow(post_id, assessor, label, (row.get("query_id") or "").strip() or None), ""
