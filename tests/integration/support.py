"""Helpers shared by the integration tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from batch_jobs.config import JobConfig
from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from server.app import App, build_server
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


@contextmanager
def serving(home: Path, job_cfg: JobConfig, workers: int) -> Iterator[tuple[App, Any, Any]]:
    """A real server on `home` with `job_cfg`: `(app, PostClassifier stub, Admin stub)`."""
    app = build_server(server_config(home, workers=workers, grace_s=1.0), job_cfg=job_cfg)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, pb_grpc.PostClassifierStub(channel), pb_grpc.AdminStub(channel)
    finally:
        channel.close()
        app.stop(grace=0)


def hold_first_predict(monkeypatch: Any, model: Any) -> tuple[threading.Event, threading.Event]:
    """The batcher's first forward pass on `model` (a ServedModel: inline or on the forward
    thread) sets `entered`, then waits for `release`."""
    entered, release = threading.Event(), threading.Event()

    def holding(fast: Any) -> Any:
        def held(*args: object, **kwargs: object) -> object:
            if not entered.is_set():
                entered.set()
                assert release.wait(10), "the test never released the held forward pass"
            return fast(*args, **kwargs)

        return held

    for path in (model.folded, model.scripted):
        monkeypatch.setattr(path, "predict", holding(path.predict))
    return entered, release
