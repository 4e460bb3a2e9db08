"""Real server processes on a temp POSTCLF_HOME each; every one is killed after its test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.faults.procs import ServerProcess
from tests.integration.support import install_model


@pytest.fixture
def make_server(tmp_path: Path, model_registry: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`make_server(with_model=True, **env)`: a not-yet-started server process."""
    made: list[ServerProcess] = []

    def make(with_model: bool = True, **env: str) -> ServerProcess:
        home = tmp_path / f"home{len(made)}"
        if with_model:
            install_model(model_registry, home)
        made.append(ServerProcess(home, env=env))
        return made[-1]

    yield make
    for server in made:
        server.stop()
