"""The domain calls behind each RPC, on numpy arrays and domain types (no protobuf, no grpc)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch_jobs.aggregation import GAUGED, AssessorQuality, assessor_quality
from batch_jobs.labels import SubmitResult
from model.data import Views
from model.registry import ModelRegistry, VersionInfo
from postclf_errors import InvalidInputError
from server.batcher import Batcher, BatchResult
from server.jobs import Jobs
from server.metrics import Metrics
from server.models import ModelHolder
from server.poolwriter import PoolBatch, PoolWriter
from store.ledger import LabelRow, Ledger, QueryRecord
from store.pool import Pool

log = logging.getLogger(__name__)


@dataclass
class PostService:
    holder: ModelHolder
    registry: ModelRegistry
    batcher: Batcher
    writer: PoolWriter
    ledger: Ledger
    pool: Pool
    metrics: Metrics
    jobs: Jobs
    # ListAssessors' answer per (label seq, classes): Dawid-Skene reads every label, so it
    # runs once per new label, not once per call; the lock makes concurrent callers share it.
    _assessors: tuple[tuple[int, tuple[str, ...]], list[AssessorQuality]] | None = None
    _assessors_lock: threading.Lock = field(default_factory=threading.Lock)

    async def classify(
        self, post_ids: np.ndarray, views: Views, deadline: float | None, skip_pool: bool
    ) -> BatchResult:
        """Predict `(n,)` posts with one model version; queue them for the pool unless skipped.

        Runs on the server's event loop (the batcher lives there); every other call here is
        blocking and runs on a worker thread."""
        if not skip_pool:
            self.pool.check(views)  # the pool's bounds, before any work is acknowledged
        result = await self.batcher.predict(views, deadline)
        if not np.isfinite(result.probs).all():  # rows are independent (BN in eval mode):
            finite = np.isfinite(result.probs).all(axis=1)  # (n,) name the first bad post
            raise InvalidInputError(
                "embedding makes the model's output non-finite (values too large?)",
                f"posts[{int(np.argmin(finite))}]",
            )
        if not skip_pool:
            classes = result.model.classes
            predicted = [classes[i] for i in result.probs.argmax(axis=1).tolist()]
            self.writer.submit(
                PoolBatch(post_ids, views, predicted, result.model.version, "classify")
            )
        return result

    def ingest(self, post_ids: np.ndarray, views: Views) -> tuple[int, int]:
        """Write posts to pool and ledger, durably before returning; returns (new, known)."""
        self.pool.check(views)
        done = self.writer.submit(PoolBatch(post_ids, views, None, None, "ingest"))
        new = done.result()  # group commit with concurrent calls; a failed write raises
        return new, len(post_ids) - new

    def submit_labels(self, rows: list[LabelRow]) -> SubmitResult:
        """Store labels durably (committed before return); bad items come back as rejections."""
        classes = self.holder.require().classes
        self.writer.sync()  # posts classified just before are known to the ledger
        result = self.jobs.submit_labels(self.ledger, classes, rows)
        self.metrics.labels.labels("accepted").inc(result.accepted)
        self.metrics.labels.labels("duplicate").inc(result.duplicates)
        self.metrics.labels.labels("rejected").inc(len(result.rejected))
        return result

    def model_info(self, version: str) -> tuple[VersionInfo, str]:
        """Registry metadata of `version` (default: the served one) and the served version."""
        served = self.holder.require().version
        return self.registry.info(version or served), served

    def _before_job(self) -> None:
        self.writer.sync()  # the job reads what was classified before it from disk

    def run_nightly(self, dry_run: bool, seed: int | None) -> tuple[Any, str | None]:
        """Run the nightly job on everything pooled so far; serve what it promoted."""
        self._before_job()
        report = self.jobs.run_nightly(dry_run=dry_run, seed=seed)
        if not dry_run:
            self.metrics.observe_nightly(report)
            aggregation = (report.retrain or {}).get("aggregation") or {}
            self.metrics.observe_assessors(aggregation.get("assessors", []))
        return report, self._reload()

    def retrain(self, force: bool) -> tuple[Any, str | None]:
        self._before_job()
        report = self.jobs.retrain(force)
        self.metrics.observe_assessors(getattr(report, "aggregation", {}).get("assessors", []))
        return report, self._reload()

    def list_queries(self, limit: int) -> list[QueryRecord]:
        return self.ledger.list_queries(limit=limit)

    def assessors(self) -> tuple[list[AssessorQuality], float]:
        """Every assessor's quality as retraining would judge it now (and the floor)."""
        crowd = self.jobs.cfg.crowd
        classes = tuple(self.holder.require().classes)
        with self._assessors_lock:
            key = (self.ledger.label_seq(), classes)  # read first: a label after it recomputes
            if self._assessors is None or self._assessors[0] != key:
                self._assessors = (key, assessor_quality(self.ledger, classes, crowd))
            quality = self._assessors[1]
        self.metrics.observe_assessors([{k: getattr(q, k) for k in GAUGED} for q in quality])
        return quality, crowd.quality_floor

    def _reload(self) -> str | None:
        model = self.holder.refresh()
        return None if model is None else model.version
