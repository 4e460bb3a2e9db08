"""processes = N: the children die with the supervisor however it dies, a restart works
whatever was killed, and a child that dies is restarted."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable

import pytest

from store.lease import _pid_alive
from tests.integration.faults.procs import START_TIMEOUT_S, ServerProcess

pytestmark = pytest.mark.slow  # `make test-fast` (-m 'not slow') leaves it out

Make = Callable[..., ServerProcess]


def _children(server: ServerProcess, nth: int) -> list[int]:
    """Pids of the children the `nth` (1-based) `children_started` line names."""
    server.wait_log("event=children_started")
    end = time.monotonic() + START_TIMEOUT_S
    while True:
        found = re.findall(
            r"event=children_started count=\d+ pids=\[([\d, ]+)\]", server.log_text()
        )
        if len(found) >= nth:
            return [int(p) for p in found[nth - 1].split(",")]
        assert time.monotonic() < end, server.tail()
        time.sleep(0.05)


def _wait_gone(pid: int) -> None:
    end = time.monotonic() + START_TIMEOUT_S
    while _pid_alive(pid):
        assert time.monotonic() < end, f"child {pid} outlived its supervisor"
        time.sleep(0.05)


def test_children_die_with_a_killed_supervisor_and_a_restart_serves(make_server: Make):
    server = make_server(POSTCLF_PROCESSES="2").start()
    server.wait_serving()
    (child,) = _children(server, 1)
    server.wait_log(f"pid={child} logger=server.app event=server_started")
    assert server.kill9() == -9
    _wait_gone(child)  # PR_SET_PDEATHSIG: SIGTERM, graceful stop
    server.start()
    server.wait_serving()
    (new_child,) = _children(server, 2)
    server.wait_log(f"pid={new_child} logger=server.app event=server_started")
    assert _pid_alive(new_child)


def test_a_dead_child_is_restarted(make_server: Make):
    server = make_server(POSTCLF_PROCESSES="2").start()
    server.wait_serving()
    (child,) = _children(server, 1)
    server.wait_log(f"pid={child} logger=server.app event=server_started")
    os.kill(child, signal.SIGKILL)
    server.wait_log(f"event=child_died index=1 pid={child}")
    assert server.proc is not None
    old = {child, server.proc.pid}
    end = time.monotonic() + START_TIMEOUT_S
    while True:
        started = re.findall(r"pid=(\d+) logger=server.app event=server_started", server.log_text())
        new = {int(p) for p in started} - old
        if new:
            break
        assert time.monotonic() < end, server.tail()
        time.sleep(0.05)
    assert all(_pid_alive(p) for p in new)
    server.term()
    assert server.wait_exit() == 0
    for pid in new:
        _wait_gone(pid)
