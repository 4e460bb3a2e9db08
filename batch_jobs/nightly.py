"""The nightly job: close old queries → expire old pool days → retrain → stream-score the
scoring window → select → record → export.

Memory does not grow with the pool: the pool is read chunk by chunk and only the best
`candidate_factor·q` rows survive a chunk (`batch_jobs.scoring`). Safe to re-run: one query per
night (a second run for the same night returns the existing one, re-exporting it if its export
is missing); one run at a time across replicas (ledger lock).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from batch_jobs.active_step import ProposedQuery
from batch_jobs.config import JobConfig, Paths, QueryConfig
from batch_jobs.export import export_query
from batch_jobs.leases import NIGHTLY, lease_for
from batch_jobs.policy import propose_policy
from batch_jobs.query_plan import merge, plan_extras
from batch_jobs.retrain import retrain
from batch_jobs.runners import ModelRef
from batch_jobs.scoring import PoolSource
from batch_jobs.stores import Stores, job_stores
from model.classifier import Classifier
from model.registry import ModelRegistry
from store.ledger import Ledger, QueryItem, QueryRecord
from store.pool import Pool, id_hashes

log = logging.getLogger(__name__)
STAGES = ("close", "expire", "retrain", "plan", "score", "record", "export")
PLAN_STREAM = 0xA55E55  # seeds the choice of control items, apart from scoring's streams


@dataclass
class NightlyReport:
    night: str
    status: str  # created | existing | skipped | dry_run | no_eligible
    reason: str = ""
    query_id: str | None = None
    export_path: str | None = None
    model_version: str | None = None  # the model that chose the query
    retrain: dict[str, Any] | None = None  # RetrainReport.to_dict(), or a failure
    pool_size: int = 0  # rows in the pool after expiry
    eligible: int = 0  # posts scored: unlabeled, not queried, in the window, usable
    skipped: dict[str, int] = field(default_factory=dict)  # pooled rows not scored, by reason
    expired: int = 0  # rows deleted with their day partitions this night
    window_since: str | None = None  # scoring window start (None: the whole retention window)
    query_size: int = 0
    post_ids: list[str] = field(default_factory=list)
    closed_queries: list[str] = field(default_factory=list)
    predicted_histogram: dict[str, int] = field(default_factory=dict)  # over every scored post
    score_summary: dict[str, float] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    posts_per_s: float = 0.0  # scoring throughput
    peak_rss_mb: float = 0.0  # this process's high-water mark (workers: see peak_rss_children)
    peak_rss_children_mb: float = 0.0

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
    """Run the nightly job for `night` (default: today, UTC). `dry_run` retrains, expires and
    writes nothing (no lock, no query, no export): it reports what would be queried."""
    night = night or datetime.now(UTC).date()
    report = NightlyReport(night.isoformat(), "skipped")
    with job_stores(paths, cfg) as stores:
        ledger, pool = stores.ledger, stores.pool
        if dry_run:
            return _run(paths, cfg, ledger, pool, night, report, dry_run=True, progress=progress)
        with lease_for(ledger, NIGHTLY, paths, cfg) as lease:  # JobBusyError: a live run holds it
            run_id = ledger.start_job("nightly")
            try:
                _run(paths, cfg, ledger, pool, night, report, dry_run=False, progress=progress,
                     commit=lease.guard)  # fmt: skip
            except BaseException as err:
                ledger.finish_job(run_id, "failed", {"error": repr(err), **report.to_dict()})
                raise
            ledger.finish_job(run_id, "ok", report.to_dict())
            return report


def _run(
    paths: Paths,
    cfg: JobConfig,
    ledger: Ledger,
    pool: Pool,
    night: date,
    report: NightlyReport,
    *,
    dry_run: bool,
    progress: bool,
    commit: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> NightlyReport:
    """The stages; `commit` wraps the query's record (the lease's guard: a job cancelled by
    shutdown or that lost its lease records nothing)."""
    stage = _Stages(report.timings, progress)
    try:
        if not dry_run:
            with stage("close"):
                cutoff = datetime.now(UTC) - timedelta(days=cfg.query_ttl_days)
                report.closed_queries = ledger.close_queries(cutoff.isoformat())
        excluded = _excluded(ledger)  # after closing: expired queries' posts are eligible again
        if not dry_run:
            with stage("expire"):  # labeled and queried posts keep their embeddings
                report.expired = pool.expire(night - timedelta(days=cfg.pool_days), excluded)
            with stage("retrain"):
                report.retrain = _retrain_reported(paths, cfg, Stores(ledger, pool))
        existing = ledger.query_for_night(night.isoformat())
        if existing is not None:
            return _existing(paths, ledger, existing, report, dry_run)
        registry = ModelRegistry(paths.models)
        clf = registry.load()  # ModelUnavailableError before bootstrap
        report.model_version = clf.meta.get("version")
        plan_rng = np.random.default_rng([cfg.seed, night.toordinal(), PLAN_STREAM])
        with stage("plan"):
            source = _source(paths, cfg, ledger, pool, excluded, report)
            extras = plan_extras(ledger, pool, clf, cfg.query, cfg.crowd, plan_rng)
        with stage("score"):
            model = ModelRef(paths.models, str(report.model_version))
            seed = (cfg.seed, night.toordinal())
            query, labeled = extras.query(cfg.query), ledger.labeled_train_posts()
            proposed = propose_policy(
                clf, model, source, query, cfg.engine, seed, progress,
                labeled_count=labeled,
                labeled_features=_labeled_features(ledger, pool, clf, labeled, query),
            )  # fmt: skip
        _account(report, proposed, cfg)
        if not len(proposed.indices):
            report.status = "no_eligible"
            report.reason = "no pooled post in the scoring window is unlabeled and unqueried"
            return report
        items = merge(_items(pool, source, proposed, clf.classes), extras, plan_rng)
        report.post_ids, report.query_size = [it.post_id for it in items], len(items)
        if dry_run:
            report.status, report.reason = "dry_run", "nothing was written"
            return report
        _record_and_export(paths, cfg, ledger, night, report, items, stage, commit, clf.classes)
        return report
    finally:
        stage.close()
        _peak_rss(report)


def _labeled_features(
    ledger: Ledger, pool: Pool, clf: Classifier, labeled: int, cfg: QueryConfig
) -> np.ndarray | None:
    """The model's features `(l, F)` of the labeled training posts while the cold start runs
    (then l < cold_start_labels: bounded), so their clusters count as covered, as in the
    simulator; None once it does not run."""
    if not cfg.cold(labeled):
        return None
    _, views = pool.get(ledger.labeled_train_post_ids(cfg.cold_start_labels))
    return clf.predict(views, with_features=True).features if len(views) else None


def _excluded(ledger: Ledger) -> np.ndarray:
    """Sorted uint64 hashes of labeled and open-query posts (O(labels), never O(pool))."""
    return np.unique(id_hashes(ledger.excluded_post_ids()))


def _window_start(cfg: JobConfig, ledger: Ledger) -> datetime | None:
    """Posts arrived since then are scored: `score_days` back, or the last successful night."""
    if cfg.score_days:
        return datetime.now(UTC) - timedelta(days=cfg.score_days)
    for run in ledger.job_runs("nightly", limit=100):
        if run.status == "ok" and (run.report or {}).get("status") == "created":
            return datetime.fromisoformat(run.started_at)
    return None  # the first night: the whole retention window


def _source(
    paths: Paths,
    cfg: JobConfig,
    ledger: Ledger,
    pool: Pool,
    excluded: np.ndarray,
    report: NightlyReport,
) -> PoolSource:
    """What tonight scores: every day segment in the window (the kept partition never)."""
    since = _window_start(cfg, ledger)
    report.window_since = since.isoformat() if since else None
    since_ns = int(since.timestamp() * 1e9) if since else None
    segments = pool.segments(include_kept=False)
    report.pool_size = sum(s.rows for s in segments)
    outside = [s for s in segments if since_ns is not None and s.modified_ns < since_ns]
    inside = [s for s in segments if s not in outside]
    report.skipped["outside_window"] = sum(s.rows for s in outside)  # not even read
    return PoolSource(
        paths.pool,
        [s.path for s in inside],
        pool.chunks(inside, cfg.engine.chunk_rows),
        excluded,
        since_ns,
    )


def _account(report: NightlyReport, proposed: ProposedQuery, cfg: JobConfig) -> None:
    counts = proposed.counts
    report.eligible = int(counts["scored"])
    for reason, n in counts["skipped"].items():
        report.skipped[reason] = report.skipped.get(reason, 0) + int(n)
    report.predicted_histogram = counts["predicted_histogram"]
    report.score_summary = counts["score_summary"]
    report.engine = asdict(cfg.engine)
    report.timings |= {f"score.{k}": v for k, v in proposed.timings.items()}
    # Where scoring time went, summed over chunks (= wall time with one local worker).
    report.timings |= {f"score.{k}_chunks": v for k, v in counts["worker_seconds"].items()}
    secs = proposed.timings.get("scoring") or 0.0
    scanned = report.eligible + sum(report.skipped.values()) - report.skipped["outside_window"]
    report.posts_per_s = scanned / secs if secs else 0.0


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. Linux's VmHWM, because `ru_maxrss` survives execve:
    a process started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss(report: NightlyReport) -> None:
    report.peak_rss_mb = peak_rss_mb()
    report.peak_rss_children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _retrain_reported(paths: Paths, cfg: JobConfig, stores: Stores) -> dict[str, Any]:
    """Retrain; a failure is logged and reported, and the night goes on with the current model."""
    try:
        return retrain(paths, cfg, stores=stores).to_dict()  # the night's stores, not a 2nd pair
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


def _items(
    pool: Pool, source: PoolSource, proposed: ProposedQuery, classes: list[str]
) -> list[QueryItem]:
    """Query items best first; ids are read for the chosen rows only."""
    ids = [
        pool.ids(source.segments[part], np.array([row]))[0]
        for part, row in zip(proposed.parts.tolist(), proposed.indices.tolist(), strict=True)
    ]
    return [
        QueryItem(
            rank=rank,
            post_id=ids[rank],
            score=float(proposed.scores[rank]),
            predicted_label=classes[int(proposed.predicted[rank])],
            confidence=float(proposed.confidence[rank]),
            reason=str(proposed.reasons[rank]),
        )
        for rank in range(len(ids))
    ]


def _record_and_export(
    paths: Paths,
    cfg: JobConfig,
    ledger: Ledger,
    night: date,
    report: NightlyReport,
    items: list[QueryItem],
    stage: _Stages,
    commit: Callable[[], AbstractContextManager[object]],
    classes: list[str],
) -> None:
    """Record the query first (a crash before the export is repaired by the next run)."""
    query_id = f"q{night:%Y%m%d}-{report.model_version or 'none'}"
    params = {
        "query": asdict(cfg.query),
        "pool_size": report.pool_size,
        "eligible": report.eligible,
        "seed": cfg.seed,
        "crowd": asdict(cfg.crowd),
        "classes": list(classes),  # the export's label choices
    }
    with stage("record"), commit():
        ledger.create_query(
            query_id, night.isoformat(), report.model_version, cfg.query.strategy, params, items
        )
    with stage("export"):
        path = export_query(paths.exports, ledger.get_query(query_id), items)
        ledger.set_query_export(query_id, str(path))
    report.status, report.query_id, report.export_path = "created", query_id, str(path)
    log.info("event=nightly_query query_id=%s size=%d", query_id, len(items))
