"""Named crash points for the fault-injection tests; inert unless the entry point arms them.

`python -m server` arms them from `fault_points` (POSTCLF_FAULT_POINTS, e.g.
"retrain.before_promote=kill"): never set it in production. Actions at a point:
  kill  SIGKILL this process (a crash at exactly that point);
  term  SIGTERM this process, wait until its shutdown has begun and cancelled the jobs,
        then go on (a shutdown that starts exactly there);
  hang  block this thread forever (a job far slower than the grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

ACTIONS = ("kill", "term", "hang")
_armed: dict[str, str] = {}
_shutdown = threading.Event()


def arm(spec: str) -> dict[str, str]:
    """Parse and arm "point=action[,point=action...]"; returns what was armed."""
    points = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, action = part.partition("=")
        if action not in ACTIONS:
            raise ValueError(f"fault point {part!r}: action must be one of {ACTIONS}")
        points[point.strip()] = action
    _armed.clear()
    _armed.update(points)
    return points


def shutdown_began() -> None:
    """The server calls this once its shutdown cancelled the jobs (releases a `term` point)."""
    _shutdown.set()


def fault_point(name: str) -> None:
    action = _armed.get(name)
    if action is None:
        return
    log.warning("event=fault_point name=%s action=%s", name, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        _shutdown.wait(30)
    elif action == "hang":
        threading.Event().wait()
