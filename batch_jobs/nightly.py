"""The nightly job: retrain on new labels → read the pool → propose a query → export → record.

Safe to re-run: one query per night (a second run for the same night returns the existing one,
re-exporting it if its export is missing); one run at a time across replicas (ledger lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from batch_jobs.active_step import ProposedQuery, propose_query
from batch_jobs.config import JobConfig, Paths
from batch_jobs.export import export_query
from batch_jobs.leases import nightly_lease
from batch_jobs.retrain import retrain
from model.classifier import Classifier
from model.data import Views
from model.registry import ModelRegistry
from store.ledger import Ledger, QueryItem, QueryRecord
from store.pool import Pool

log = logging.getLogger(__name__)
LOCK = "nightly"
STAGES = ("close", "retrain", "read_pool", "eligible", "propose", "record", "export")


@dataclass
class NightlyReport:
    night: str
    status: str  # created | existing | skipped | dry_run | no_eligible
    reason: str = ""
    query_id: str | None = None
    export_path: str | None = None
    model_version: str | None = None  # the model that chose the query
    retrain: dict[str, Any] | None = None  # RetrainReport.to_dict(), or a failure
    pool_size: int = 0
    eligible: int = 0
    query_size: int = 0
    post_ids: list[str] = field(default_factory=list)
    closed_queries: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stages:
    """Per-stage wall time, with an optional tqdm bar over the stages."""

    def __init__(self, timings: dict[str, float], progress: bool) -> None:
        self.timings = timings
        self.bar = tqdm(total=len(STAGES), desc="nightly", unit="stage", disable=not progress)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - t0
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_nightly(
    paths: Paths,
    cfg: JobConfig,
    *,
    night: date | None = None,
    dry_run: bool = False,
    progress: bool = False,
) -> NightlyReport:
    """Run the nightly job for `night` (default: today, UTC). `dry_run` retrains nothing and
    writes nothing (no lock, no query, no export): it reports what would be queried."""
    night = night or datetime.now(UTC).date()
    report = NightlyReport(night.isoformat(), "skipped")
    ledger = Ledger(paths.ledger, cfg.ledger_synchronous, cfg.holdout_fraction)
    try:
        if dry_run:
            return _run(paths, cfg, ledger, night, report, dry_run=True, progress=progress)
        with nightly_lease(ledger, paths, cfg):  # JobBusyError when a live run holds it
            return _run_recorded(paths, cfg, ledger, night, report, progress)
    finally:
        ledger.close()


def _run_recorded(
    paths: Paths, cfg: JobConfig, ledger: Ledger, night: date, report: NightlyReport, progress: bool
) -> NightlyReport:
    run_id = ledger.start_job("nightly")
    try:
        _run(paths, cfg, ledger, night, report, dry_run=False, progress=progress)
    except BaseException as err:
        ledger.finish_job(run_id, "failed", {"error": repr(err), **report.to_dict()})
        raise
    ledger.finish_job(run_id, "ok", report.to_dict())
    return report


def _run(
    paths: Paths,
    cfg: JobConfig,
    ledger: Ledger,
    night: date,
    report: NightlyReport,
    *,
    dry_run: bool,
    progress: bool,
) -> NightlyReport:
    stage = _Stages(report.timings, progress)
    try:
        if not dry_run:
            with stage("close"):
                cutoff = datetime.now(UTC) - timedelta(days=cfg.query_ttl_days)
                report.closed_queries = ledger.close_queries(cutoff.isoformat())
            with stage("retrain"):
                report.retrain = _retrain_reported(paths, cfg)
        existing = ledger.query_for_night(night.isoformat())
        if existing is not None:
            return _existing(paths, ledger, existing, report, dry_run)
        clf = ModelRegistry(paths.models).load()  # ModelUnavailableError before bootstrap
        report.model_version = clf.meta.get("version")
        with stage("read_pool"):
            pool = Pool(paths.pool, cfg.pool_flush_rows)
            if len(pool) == 0:
                report.status, report.reason = "no_eligible", "the pool is empty"
                return report
            ids, views = pool.read()
            report.pool_size = len(ids)
        with stage("eligible"):
            eligible = _eligible(ledger, clf, ids, views)
            report.eligible = int(eligible.sum())
        if report.eligible == 0:
            report.status = "no_eligible"
            report.reason = "every pooled post is labeled or in an open query"
            return report
        with stage("propose"):
            proposed = _propose(clf, views, eligible, cfg, night)
            report.timings |= {f"propose.{k}": v for k, v in proposed.timings.items()}
        items = _items(ids, proposed, clf.classes)
        report.post_ids = [it.post_id for it in items]
        report.query_size = len(items)
        if dry_run:
            report.status, report.reason = "dry_run", "nothing was written"
            return report
        _record_and_export(paths, cfg, ledger, night, report, items, stage)
        return report
    finally:
        stage.close()


def _retrain_reported(paths: Paths, cfg: JobConfig) -> dict[str, Any]:
    """Retrain; a failure is logged and reported, and the night goes on with the current model."""
    try:
        return retrain(paths, cfg).to_dict()
    except Exception as err:  # reported in the job run; the query is still made
        log.exception("event=nightly_retrain_failed")
        return {"status": "failed", "reason": repr(err)}


def _existing(
    paths: Paths, ledger: Ledger, query: QueryRecord, report: NightlyReport, dry_run: bool
) -> NightlyReport:
    """This night already has a query: report it, re-exporting it if the export is missing."""
    items = ledger.query_items(query.query_id)
    report.status, report.reason = "existing", "this night already has a query"
    report.query_id, report.model_version = query.query_id, query.model_version
    report.post_ids, report.query_size = [it.post_id for it in items], len(items)
    report.pool_size = int(query.params.get("pool_size") or 0)
    report.eligible = int(query.params.get("eligible") or 0)
    path = query.export_path
    if not dry_run and (path is None or not (Path(path) / "manifest.json").exists()):
        path = str(export_query(paths.exports, query, items))
        ledger.set_query_export(query.query_id, path)
    report.export_path = path
    return report


def _eligible(ledger: Ledger, clf: Classifier, ids: np.ndarray, views: Views) -> np.ndarray:
    """`(n,) bool`: not labeled, not in an open query, and with a view the model can use."""
    excluded = ledger.labeled_post_ids() | ledger.posts_in_open_queries()
    fresh = np.fromiter((p not in excluded for p in ids.tolist()), dtype=bool, count=len(ids))
    cfg = clf.net_config
    usable = np.zeros(len(ids), dtype=bool)
    if cfg.image_dim and views.image_mask is not None:
        usable |= views.image_mask
    if cfg.text_dim and views.text_mask is not None:
        usable |= views.text_mask
    return fresh & usable


def _propose(
    clf: Classifier, views: Views, eligible: np.ndarray, cfg: JobConfig, night: date
) -> ProposedQuery:
    """Same seed and night → same query. A pool smaller than the query size gives all of it."""
    rng = np.random.default_rng([cfg.seed, night.toordinal()])
    query_cfg = cfg.query
    if int(eligible.sum()) < query_cfg.query_size:
        query_cfg = replace(query_cfg, query_size=int(eligible.sum()))
    return propose_query(clf, views, eligible, query_cfg, rng)


def _items(ids: np.ndarray, proposed: ProposedQuery, classes: list[str]) -> list[QueryItem]:
    return [
        QueryItem(
            rank=rank,
            post_id=str(ids[row]),
            score=float(proposed.scores[rank]),
            predicted_label=classes[int(proposed.predicted[rank])],
            confidence=float(proposed.confidence[rank]),
            reason=str(proposed.reasons[rank]),
        )
        for rank, row in enumerate(proposed.indices.tolist())
    ]


def _record_and_export(
    paths: Paths,
    cfg: JobConfig,
    ledger: Ledger,
    night: date,
    report: NightlyReport,
    items: list[QueryItem],
    stage: _Stages,
) -> None:
    """Record the query first (a crash before the export is repaired by the next run)."""
    query_id = f"q{night:%Y%m%d}-{report.model_version or 'none'}"
    params = {
        "query": asdict(cfg.query),
        "pool_size": report.pool_size,
        "eligible": report.eligible,
        "seed": cfg.seed,
    }
    with stage("record"):
        ledger.create_query(
            query_id, night.isoformat(), report.model_version, cfg.query.strategy, params, items
        )
    with stage("export"):
        path = export_query(paths.exports, ledger.get_query(query_id), items)
        ledger.set_query_export(query_id, str(path))
    report.status, report.query_id, report.export_path = "created", query_id, str(path)
    log.info("event=nightly_query query_id=%s size=%d", query_id, len(items))
