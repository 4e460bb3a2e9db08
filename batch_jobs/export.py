"""Query export for assessors: exports/<query_id>/{query.csv, query.parquet, manifest.json,
tasks.json, label_config.xml}.

`query.csv` has empty `label` and `assessor_id` columns: an assessor fills them in and sends the
file back (`python -m client submit-labels query.csv`). `tasks.json` is the same query as Label
Studio tasks with our prediction as a pre-annotation (`label_config.xml` is its interface);
Label Studio's JSON export goes back the same way.

The folder is written under a temporary name and renamed into place, so a reader sees a whole
export or none. Re-exporting an existing query leaves the finished folder as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from batch_jobs import label_studio
from batch_jobs.faults import fault_point
from store.ledger import QueryItem, QueryRecord, now_iso

COLUMNS = [
    "query_id",
    "rank",
    "post_id",
    "predicted_label",
    "confidence",
    "score",
    "strategy",
    "reason",
    "label",  # filled in by the assessor
    "assessor_id",  # filled in by the assessor
]
FILES = ("query.csv", "query.parquet", "manifest.json", "tasks.json", "label_config.xml")


def query_frame(query: QueryRecord, items: list[QueryItem]) -> pd.DataFrame:
    """One row per queried post, best first, in the `COLUMNS` order."""
    return pd.DataFrame(
        {
            "query_id": [query.query_id] * len(items),
            "rank": [it.rank for it in items],
            "post_id": [it.post_id for it in items],
            "predicted_label": [it.predicted_label for it in items],
            "confidence": [it.confidence for it in items],
            "score": [it.score for it in items],
            "strategy": [query.strategy] * len(items),
            "reason": [it.reason for it in items],
            "label": [""] * len(items),
            "assessor_id": [""] * len(items),
        },
        columns=COLUMNS,
    )


def manifest(query: QueryRecord, items: list[QueryItem]) -> dict[str, Any]:
    """Model version, strategy, parameters, pool/eligible counts, counts per predicted class."""
    params = dict(query.params)
    return {
        "query_id": query.query_id,
        "night": query.night,
        "model_version": query.model_version,
        "strategy": query.strategy,
        "parameters": params.get("query", params),
        "pool_size": params.get("pool_size"),
        "eligible": params.get("eligible"),
        "size": len(items),
        "predicted_counts": dict(Counter(str(it.predicted_label) for it in items)),
        "created_at": query.created_at,
        "exported_at": now_iso(),
        "overlap": int((params.get("crowd") or {}).get("overlap", 1)),  # answers per item
        "files": ["query.csv", "query.parquet", "tasks.json", "label_config.xml"],
    }


def export_query(exports_dir: Path, query: QueryRecord, items: list[QueryItem]) -> Path:
    """Write the query's folder atomically; returns `exports_dir/<query_id>`."""
    exports_dir = Path(exports_dir)
    final = exports_dir / query.query_id
    if (final / "manifest.json").exists():
        return final
    exports_dir.mkdir(parents=True, exist_ok=True)
    tmp = exports_dir / f".tmp-{query.query_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        frame = query_frame(query, items)
        frame.to_csv(tmp / "query.csv", index=False)
        fault_point("export.write")
        frame.to_parquet(tmp / "query.parquet", index=False, engine="pyarrow")
        (tmp / "manifest.json").write_text(json.dumps(manifest(query, items), indent=2))
        (tmp / "tasks.json").write_text(json.dumps(label_studio.tasks(query, items), indent=1))
        names = query.params.get("classes") or sorted({str(it.predicted_label) for it in items})
        (tmp / "label_config.xml").write_text(label_studio.label_config(names))
        for name in FILES:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # a torn folder cannot exist (rename), but a foreign one might
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_export(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The query table (from Parquet) and the manifest of an exported query."""
    folder = Path(folder)
    return pd.read_parquet(folder / "query.parquet"), json.loads(
        (folder / "manifest.json").read_text()
    )


def remove_stale_exports(exports_dir: Path) -> list[str]:
    """Remove the `.tmp-*` folders a killed export left behind; returns their names.

    Call only while holding the nightly lease: every export runs under it, so no live writer
    owns a temporary folder then."""
    exports_dir = Path(exports_dir)
    if not exports_dir.is_dir():
        return []
    removed = []
    for tmp in exports_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp.name)
    return removed
