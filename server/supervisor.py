"""Several server processes on one port (SO_REUSEPORT): gRPC's per-call cost in Python caps one
process, so throughput scales by processes, one per core (PERF_NOTES), not by threads.

The first process is the full server (bootstrap, scheduler, metrics on `metrics_port`); each
extra one is started as `python -m server` with the same config, serving only (no scheduler,
no bootstrap; metrics on `metrics_port + i`), and loads the model from the shared registry.

Children die with the parent, however it dies: each asks the kernel for SIGTERM when its
parent exits (`prctl(PR_SET_PDEATHSIG)`, Linux), and exits at once if the parent is already
gone. The parent's main thread (the one that forked them, which the kernel watches) checks
them every second and restarts one that died (logged; at most `MAX_RESTARTS` per minute).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from postclf_errors import InvalidInputError
from server.config import ServerConfig

log = logging.getLogger(__name__)

PARENT_ENV = "POSTCLF_SUPERVISOR_PID"  # set in each child: the pid it must not outlive
PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5  # per child per minute; past that the child stays down (and is logged)


def child_env(cfg: ServerConfig, env: Mapping[str, str], index: int) -> dict[str, str]:
    metrics = "" if cfg.metrics_port is None else str(cfg.metrics_port + index)
    return dict(env) | {
        "POSTCLF_PROCESSES": "1",
        "POSTCLF_REUSE_PORT": "1",
        "POSTCLF_SCHEDULER": "0",
        "POSTCLF_BOOTSTRAP": "0",
        "POSTCLF_GRPC_PORT": str(cfg.grpc_port),
        "POSTCLF_METRICS_PORT": metrics,
        PARENT_ENV: str(os.getpid()),
    }


def die_with_parent(parent_pid: int) -> None:
    """In a child: SIGTERM when the parent exits; exit now if it is gone already."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.error("event=pdeathsig_failed errno=%d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        log.error("event=parent_gone parent=%d", parent_pid)
        raise SystemExit(1)


class Children:
    """The serving-only processes of a supervisor (none when `cfg.processes == 1`)."""

    def __init__(self, cfg: ServerConfig, config_path: Path | None, env: Mapping[str, str]):
        if cfg.processes > 1 and cfg.grpc_port == 0:
            raise InvalidInputError("several processes need a fixed port", "grpc_port")
        self.cfg, self.env = cfg, env
        self.cmd = [sys.executable, "-m", "server"]
        if config_path is not None:
            self.cmd += ["--config", str(config_path)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.restarts: dict[int, list[float]] = {}

    def start(self) -> Children:
        for i in range(1, self.cfg.processes):
            self._spawn(i)
        if self.procs:
            log.info("event=children_started count=%d pids=%s", len(self.procs), self.pids())
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def _spawn(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(self.cmd, env=child_env(self.cfg, self.env, index))

    def check(self) -> None:
        """Restart a child that exited (call from the thread that started them)."""
        now = time.monotonic()
        for index, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            recent = [t for t in self.restarts.get(index, []) if now - t < 60]
            if len(recent) >= MAX_RESTARTS:
                continue  # logged when it gave up
            self.restarts[index] = [*recent, now]
            log.error(
                "event=child_died index=%d pid=%d code=%s restart=%d",
                index,
                proc.pid,
                code,
                len(recent) + 1,
            )
            if len(recent) + 1 == MAX_RESTARTS:
                log.error("event=child_given_up index=%d", index)
            self._spawn(index)

    def signal(self) -> None:
        """SIGTERM each child: each stops gracefully, in parallel with the first process."""
        for child in self.procs.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def wait(self, grace_s: float) -> None:
        """Wait for the children to exit; SIGKILL one that outlives the grace period + 5 s."""
        end = time.monotonic() + grace_s + 5
        for child in self.procs.values():
            try:
                child.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("event=child_killed pid=%d", child.pid)
                child.kill()
                child.wait()
