"""The batch jobs as the server calls them: one place that binds `batch_jobs` to paths + config.

The nightly, retrain, bootstrap and scheduler modules are imported on first use: they pull in
training and FAISS, which request handling never needs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_jobs.config import JobConfig, Paths
from batch_jobs.labels import LabelIn, SubmitResult, submit_labels
from store.ledger import Ledger


def _job(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"batch_jobs.{module}"), name)


@dataclass(frozen=True)
class Jobs:
    paths: Paths
    cfg: JobConfig

    def submit_labels(
        self, ledger: Ledger, classes: Sequence[str], labels: Sequence[LabelIn]
    ) -> SubmitResult:
        return submit_labels(ledger, classes, labels)

    def run_nightly(self, dry_run: bool, seed: int | None) -> Any:
        cfg = self.cfg if seed is None else dataclasses.replace(self.cfg, seed=seed)
        return _job("nightly", "run_nightly")(self.paths, cfg, dry_run=dry_run)

    def retrain(self, force: bool) -> Any:
        return _job("retrain", "retrain")(self.paths, self.cfg, force=force)

    def ensure_model(self, data_path: Path) -> Any:
        return _job("bootstrap", "ensure_model")(self.paths, self.cfg, data_path)

    def build_scheduler(self, job: Callable[[], Any], cron: str) -> Any:
        """A not-yet-started APScheduler running `job` on `cron` (UTC)."""
        build = _job("scheduler", "build_scheduler")
        return build(job, cron, misfire_grace_time=self.cfg.misfire_grace_s)
