"""The batch jobs as the server calls them: one place that binds `batch_jobs` to paths + config.

The nightly, retrain and bootstrap modules are imported on first use (inside the methods): they
pull in training and FAISS, which request handling never needs. Their reports stay typed.

Each job runs in its own daemon thread inside the server's `JobScope` (store.lease), and the
caller waits for it or for shutdown, whichever comes first: a shutdown cancels the job (it
never promotes afterwards, see `Lease.guard`), answers its caller with JobCancelledError, and
the process exits without waiting for the job's thread.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_jobs.config import JobConfig, Paths
from batch_jobs.labels import SubmitResult, submit_labels
from batch_jobs.leases import recover_all
from batch_jobs.scheduler import build_scheduler
from postclf_errors import JobCancelledError
from store.lease import JobScope
from store.ledger import LabelRow, Ledger

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from batch_jobs.nightly import NightlyReport
    from batch_jobs.retrain import RetrainReport

JOB_THREAD_PREFIX = "job-"  # the daemon threads jobs run in (see server/__main__.py)


@dataclass(frozen=True)
class Jobs:
    paths: Paths
    cfg: JobConfig
    scope: JobScope = field(default_factory=JobScope)

    def submit_labels(
        self, ledger: Ledger, classes: Sequence[str], labels: Sequence[LabelRow]
    ) -> SubmitResult:
        return submit_labels(ledger, classes, labels)

    def run_nightly(self, dry_run: bool, seed: int | None) -> NightlyReport:
        from batch_jobs.nightly import run_nightly  # lazy: training and FAISS

        cfg = self.cfg if seed is None else dataclasses.replace(self.cfg, seed=seed)
        report: NightlyReport = self._run(
            "nightly", lambda: run_nightly(self.paths, cfg, dry_run=dry_run)
        )
        return report

    def retrain(self, force: bool) -> RetrainReport:
        from batch_jobs.retrain import retrain  # lazy: training

        report: RetrainReport = self._run(
            "retrain", lambda: retrain(self.paths, self.cfg, force=force)
        )
        return report

    def ensure_model(self, data_path: Path, unlabeled_share: float = 0.0) -> str:
        from batch_jobs.bootstrap import ensure_model  # lazy: training

        version: str = self._run(
            "bootstrap", lambda: ensure_model(self.paths, self.cfg, data_path, unlabeled_share)
        )
        return version

    def recover(self) -> dict[str, bool]:
        """Clean up after jobs killed in an earlier life (runs, leases, export temp folders)."""
        return recover_all(self.paths, self.cfg)

    def build_scheduler(self, job: Callable[[], Any], cron: str) -> BackgroundScheduler:
        """A not-yet-started APScheduler running `job` on `cron` (UTC)."""
        return build_scheduler(job, cron, misfire_grace_time=self.cfg.misfire_grace_s)

    def _run(self, name: str, job: Callable[[], Any]) -> Any:
        """Run `job` in a daemon thread of the scope; JobCancelledError if shutdown comes first."""
        if self.scope.closed.is_set():
            raise JobCancelledError(f"job {name!r} refused: the server is shutting down")
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                with self.scope.active():
                    outcome["result"] = job()
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc
            finally:
                done.set()
                self.scope.notify()

        threading.Thread(target=target, name=f"{JOB_THREAD_PREFIX}{name}", daemon=True).start()
        if not self.scope.wait_for(done):
            raise JobCancelledError(
                f"job {name!r} cancelled: the server is shutting down (nothing promoted)"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]
