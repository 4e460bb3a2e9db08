"""`python -m server` as a real subprocess on a free port with its own POSTCLF_HOME."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from postclf.v1 import postclf_pb2_grpc as pb_grpc
from tests.integration.support import DATA

ROOT = Path(__file__).resolve().parents[3]
JOBS_TOML = """
[jobs]
min_new_labels = 1
[jobs.train]
d = 16
max_epochs = 3
finetune_max_epochs = 2
base_batch = 64
[jobs.query]
query_size = 10
"""
SERVING = health_pb2.HealthCheckResponse.SERVING
START_TIMEOUT_S = 180.0  # a hang guard for a start on 2 busy cores, not a performance bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """One server process; `start()` again after it died is a restart on the same home."""

    home: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self, **env: str) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "test.toml"
        config.write_text(JOBS_TOML)
        full = (
            dict(os.environ)
            | {
                "POSTCLF_CONFIG": str(config),
                "POSTCLF_HOME": str(self.home),
                "POSTCLF_HOST": "127.0.0.1",
                "POSTCLF_GRPC_PORT": str(self.port),
                "POSTCLF_METRICS_PORT": "",
                "POSTCLF_SCHEDULER": "0",
                "POSTCLF_BOOTSTRAP": "0",
                "POSTCLF_BOOTSTRAP_DATA": str(DATA),
                "POSTCLF_MODEL_POLL_S": "0.2",
                "POSTCLF_GRACE_S": "2",
                "POSTCLF_LOG_LEVEL": "INFO",
            }
            | self.env
            | env
        )
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=ROOT, env=full, stdout=log, stderr=log
        )
        log.close()
        return self

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stubs(self, channel: grpc.Channel) -> tuple[pb_grpc.PostClassifierStub, pb_grpc.AdminStub]:
        return pb_grpc.PostClassifierStub(channel), pb_grpc.AdminStub(channel)

    def wait_serving(self) -> None:
        """Until health says SERVING; fails with the log if the process exits first."""
        assert self.proc is not None
        end = time.monotonic() + START_TIMEOUT_S
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited {self.proc.returncode}:\n{self.tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > end:
                    raise AssertionError(f"not SERVING after {START_TIMEOUT_S} s:\n{self.tail()}")
                time.sleep(0.1)  # polling interval of an external observer

    def wait_log(self, text: str) -> None:
        """Until the server's log contains `text` (or it exits / the guard runs out)."""
        end = time.monotonic() + START_TIMEOUT_S
        while text not in self.log_text():
            assert self.proc is not None
            if self.proc.poll() is not None and text not in self.log_text():
                raise AssertionError(f"exited before logging {text!r}:\n{self.tail()}")
            if time.monotonic() > end:
                raise AssertionError(f"never logged {text!r}:\n{self.tail()}")
            time.sleep(0.05)

    def kill9(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait()

    def term(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = START_TIMEOUT_S) -> int:
        """Reaped exit code (a negative signal number when killed)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"did not exit within {timeout} s:\n{self.tail()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])
