"""The batch jobs as the server calls them: one place that binds `batch_jobs` to paths + config.

The nightly, retrain, bootstrap and scheduler modules are imported on first use: they pull in
training and FAISS, which request handling never needs.

Each job runs in its own daemon thread inside the server's `JobScope` (store.lease), and the
caller waits for it or for shutdown, whichever comes first: a shutdown cancels the job (it
never promotes afterwards, see `Lease.guard`), answers its caller with JobCancelledError, and
the process exits without waiting for the job's thread.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_jobs.config import JobConfig, Paths
from batch_jobs.labels import SubmitResult, submit_labels
from postclf_errors import JobCancelledError
from store.lease import JobScope
from store.ledger import LabelRow, Ledger

JOB_THREAD_PREFIX = "job-"  # the daemon threads jobs run in (see server/__main__.py)


def _job(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"batch_jobs.{module}"), name)


@dataclass(frozen=True)
class Jobs:
    paths: Paths
    cfg: JobConfig
    scope: JobScope = field(default_factory=JobScope)

    def submit_labels(
        self, ledger: Ledger, classes: Sequence[str], labels: Sequence[LabelRow]
    ) -> SubmitResult:
        return submit_labels(ledger, classes, labels)

    def run_nightly(self, dry_run: bool, seed: int | None) -> Any:
        cfg = self.cfg if seed is None else dataclasses.replace(self.cfg, seed=seed)
        return self._run(
            "nightly", lambda: _job("nightly", "run_nightly")(self.paths, cfg, dry_run=dry_run)
        )

    def retrain(self, force: bool) -> Any:
        return self._run(
            "retrain", lambda: _job("retrain", "retrain")(self.paths, self.cfg, force=force)
        )

    def ensure_model(self, data_path: Path) -> Any:
        run = _job("bootstrap", "ensure_model")
        return self._run("bootstrap", lambda: run(self.paths, self.cfg, data_path))

    def recover(self) -> dict[str, bool]:
        """Clean up after jobs killed in an earlier life (runs, leases, export temp folders)."""
        return _job("leases", "recover_all")(self.paths, self.cfg)

    def build_scheduler(self, job: Callable[[], Any], cron: str) -> Any:
        """A not-yet-started APScheduler running `job` on `cron` (UTC)."""
        build = _job("scheduler", "build_scheduler")
        return build(job, cron, misfire_grace_time=self.cfg.misfire_grace_s)

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
