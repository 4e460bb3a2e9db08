"""Helpers shared by the integration tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np

from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from server.app import App
from server.config import BatcherConfig, LimitsConfig, ServerConfig
from tests.conftest import SMALL

DATA = SMALL


@dataclass(frozen=True)
class SmallData:
    post_ids: np.ndarray  # (n,) str
    image: np.ndarray  # (n, 384) float32, all-NaN row = missing
    text: np.ndarray  # (n, 384)
    label: np.ndarray  # (n,) int
    classes: list[str]

    def posts(self, idx: np.ndarray | slice, as_bytes: bool = True) -> list[pb.Post]:
        return arrays_to_posts(self.post_ids[idx], self.image[idx], self.text[idx], as_bytes)


@dataclass
class Running:
    """A started server and a channel to it."""

    app: App
    channel: grpc.Channel
    classifier: pb_grpc.PostClassifierStub
    admin: pb_grpc.AdminStub

    @property
    def home(self) -> Path:
        return Path(self.app.cfg.home)


def server_config(home: Path, **overrides: object) -> ServerConfig:
    base = ServerConfig(
        home=home,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=None,
        workers=32,
        grace_s=2.0,
        model_poll_s=0.1,
        bootstrap=False,
        scheduler=False,
        batcher=BatcherConfig(max_batch=256, max_delay_ms=2.0),
        limits=LimitsConfig(max_posts_per_call=512, max_message_bytes=4 * 1024 * 1024),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def install_model(registry_root: Path, home: Path) -> None:
    shutil.copytree(registry_root, home / "models", dirs_exist_ok=True)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a state another thread reaches when it exposes no event of its own."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        tick.wait(0.002)
