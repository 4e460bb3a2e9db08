"""Label Studio formats: the query as tasks with our prediction as a pre-annotation (export), and
Label Studio's JSON export read back as labels (import), every bad task with its reason.

Posts are embeddings here, so a task shows the `post_id` (a deployment points `$post_id` at its
own viewer). One `<Choices name="label">` over the model's classes; `overlap` is the number of
annotations to collect per task (Label Studio's project setting "maximum annotations").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

from store.ledger import QueryItem, QueryRecord
from store.records import LabelRow

FROM_NAME, TO_NAME = "label", "post"
MAX_ASSESSOR_BYTES = 128


def label_config(classes: Sequence[str]) -> str:
    """The labeling interface: the post id and one choice per class."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Text name="{TO_NAME}" value="$post_id"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" required="true">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )


def tasks(query: QueryRecord, items: Sequence[QueryItem]) -> list[dict[str, Any]]:
    """One task per item (controls look like any other), our prediction as pre-annotation."""
    out = []
    for it in items:
        task: dict[str, Any] = {
            "data": {"post_id": it.post_id, "query_id": query.query_id, "rank": it.rank},
        }
        if it.predicted_label is not None:
            task["predictions"] = [
                {
                    "model_version": query.model_version or "",
                    "score": it.confidence,
                    "result": [_choice(it.predicted_label)],
                }
            ]
        out.append(task)
    return out


def _choice(label: str) -> dict[str, Any]:
    return {
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "choices",
        "value": {"choices": [label]},
    }


def read_export(doc: Any) -> tuple[list[LabelRow], list[str]]:
    """Labels from Label Studio's JSON export (a list of tasks with `annotations`), and one
    reason per task or annotation that gave none ("tasks[3].annotations[0]: ..."). The assessor
    is the annotator's email, else `ls-user-<id>`."""
    if not isinstance(doc, list):
        return [], ["file: a Label Studio JSON export is a list of tasks"]
    labels: list[LabelRow] = []
    problems: list[str] = []
    for i, task in enumerate(doc):
        where = f"tasks[{i}]"
        post_id, query_id, bad = _task_ids(task)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        for j, ann in enumerate(task.get("annotations") or []):
            row, why = _annotation(ann, post_id, query_id)
            if row is None:
                problems.append(f"{where}.annotations[{j}]: {why}")
            else:
                labels.append(row)
        if not task.get("annotations"):
            problems.append(f"{where}: no annotations (not labeled yet)")
    return labels, problems


def _task_ids(task: Any) -> tuple[str, str | None, str]:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        return "", None, "not a task object with a 'data' object"
    post_id = task["data"].get("post_id")
    if not isinstance(post_id, str) or not post_id:
        return "", None, "data.post_id is missing or not a string"
    query_id = task["data"].get("query_id")
    return post_id, query_id if isinstance(query_id, str) and query_id else None, ""


def _annotation(ann: Any, post_id: str, query_id: str | None) -> tuple[LabelRow | None, str]:
    if not isinstance(ann, dict):
        return None, "not an object"
    if ann.get("was_cancelled"):
        return None, "skipped by the annotator (was_cancelled)"
    assessor = _assessor(ann.get("completed_by"))
    if not assessor:
        return None, "completed_by names no annotator"
    if len(assessor.encode()) > MAX_ASSESSOR_BYTES:
        return None, f"annotator id longer than {MAX_ASSESSOR_BYTES} bytes"
    picked = [
        c
        for r in ann.get("result") or []
        if isinstance(r, dict) and r.get("from_name") == FROM_NAME
        for c in (r.get("value") or {}).get("choices") or []
    ]
    if len(picked) != 1 or not isinstance(picked[0], str):
        return None, f"expected one '{FROM_NAME}' choice, found {len(picked)}"
    return LabelRow(post_id, assessor, picked[0], query_id), ""


def _assessor(who: Any) -> str:
    if isinstance(who, dict):
        who = who.get("email") or (f"ls-user-{who['id']}" if "id" in who else "")
    elif isinstance(who, int) and not isinstance(who, bool):
        who = f"ls-user-{who}"
    return who.strip() if isinstance(who, str) else ""
