"""Several server processes on one port (SO_REUSEPORT): gRPC's per-call cost in Python caps one
process, so throughput scales by processes, one per core (PERF_NOTES), not by threads.

The first process is the full server (bootstrap, scheduler, metrics on `metrics_port`); each
extra one is started as `python -m server` with the same config, serving only (no scheduler,
no bootstrap; metrics on `metrics_port + i`), and loads the model from the shared registry.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from postclf_errors import InvalidInputError
from server.config import ServerConfig

log = logging.getLogger(__name__)


def child_env(cfg: ServerConfig, env: Mapping[str, str], index: int) -> dict[str, str]:
    metrics = "" if cfg.metrics_port is None else str(cfg.metrics_port + index)
    return dict(env) | {
        "POSTCLF_PROCESSES": "1",
        "POSTCLF_REUSE_PORT": "1",
        "POSTCLF_SCHEDULER": "0",
        "POSTCLF_BOOTSTRAP": "0",
        "POSTCLF_GRPC_PORT": str(cfg.grpc_port),
        "POSTCLF_METRICS_PORT": metrics,
    }


def start_children(
    cfg: ServerConfig, config_path: Path | None, env: Mapping[str, str]
) -> list[subprocess.Popen]:
    """Start `cfg.processes - 1` serving-only processes on the same port."""
    if cfg.processes <= 1:
        return []
    if cfg.grpc_port == 0:
        raise InvalidInputError("several processes need a fixed port", "grpc_port")
    cmd = [sys.executable, "-m", "server"]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    children = [subprocess.Popen(cmd, env=child_env(cfg, env, i)) for i in range(1, cfg.processes)]
    log.info("event=children_started count=%d pids=%s", len(children), [c.pid for c in children])
    return children


def signal_children(children: list[subprocess.Popen]) -> None:
    """SIGTERM each child: each stops gracefully, in parallel with the first process."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)


def wait_children(children: list[subprocess.Popen], grace_s: float) -> None:
    """Wait for the children to exit; SIGKILL one that outlives the grace period."""
    for child in children:
        try:
            child.wait(timeout=grace_s + 10)
        except subprocess.TimeoutExpired:
            log.error("event=child_killed pid=%d", child.pid)
            child.kill()
            child.wait()
