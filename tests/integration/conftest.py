"""A real server on a loopback port (port 0), a real SQLite ledger, a tiny model trained once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from model.classifier import Classifier
from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from server.app import build_server
from tests.integration.support import Running, SmallData, install_model, server_config


@pytest.fixture(scope="session")
def data(small_npz: dict[str, np.ndarray]) -> SmallData:
    d = small_npz  # the suite's one load of reviews_small
    return SmallData(
        d["post_id"].astype(str),
        d["image"],
        d["text"],
        d["label"].astype(int),
        [str(c) for c in d["class_names"]],
    )


@pytest.fixture(scope="session")
def model_registry(bootstrapped_home: Path) -> Path:
    """The suite's shared registry (v0001 promoted); servers get a copy (install_model)."""
    return bootstrapped_home / "models"


@pytest.fixture(scope="session")
def served_model(model_registry: Path) -> Classifier:
    return ModelRegistry(model_registry).load()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Factory: `start_server(home=None, **config overrides)`; every server is stopped after."""
    started: list[Running] = []

    def start(home: Path | None = None, **overrides: object) -> Running:
        home = home or tmp_path / "home"
        app = build_server(server_config(home, **overrides))
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        running = Running(
            app, channel, pb_grpc.PostClassifierStub(channel), pb_grpc.AdminStub(channel)
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.app.stop(grace=0)


@pytest.fixture
def server(tmp_path: Path, model_registry: Path, start_server: Callable[..., Running]) -> Running:
    """A server whose registry already holds v0001 (health SERVING from the start)."""
    home = tmp_path / "home"
    install_model(model_registry, home)
    return start_server(home)
