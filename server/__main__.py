"""`python -m server [--config FILE]`: build the config, bootstrap, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path

from batch_jobs import faults
from model.threads import set_threads
from server.app import bootstrap_in_background, build_server
from server.config import load_config
from server.jobs import JOB_THREAD_PREFIX
from server.logs import setup_logging
from server.supervisor import PARENT_ENV, Children, die_with_parent

log = logging.getLogger("server")


def _overdue(grace_s: float) -> None:
    log.error("event=shutdown_overdue grace_s=%s action=exit", grace_s)
    logging.shutdown()
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("POSTCLF_CONFIG"),
        help="TOML config file (default: $POSTCLF_CONFIG); env vars override it",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config, os.environ)
    setup_logging(cfg.log_level)
    if cfg.torch_threads > 0:  # process-wide, so only at the entry point
        set_threads(cfg.torch_threads)  # torch's and numpy's BLAS (the folded model)
    if cfg.processes > 1:
        cfg = dataclasses.replace(cfg, reuse_port=True)
    if PARENT_ENV in os.environ:  # a supervisor's child: never outlive it
        die_with_parent(int(os.environ[PARENT_ENV]))
    if cfg.fault_points:
        log.warning("event=fault_points_armed points=%s", faults.arm(cfg.fault_points))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("event=signal name=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app = build_server(cfg)
    children = Children(cfg, args.config, os.environ).start()
    if cfg.bootstrap:
        bootstrap_in_background(app, cfg.bootstrap_data, cfg.bootstrap_unlabeled_share)
    while not stop.wait(1.0):
        children.check()
    watchdog = threading.Timer(cfg.grace_s + 5, _overdue, args=(cfg.grace_s,))
    watchdog.daemon = True
    watchdog.start()  # the exit bound holds even if some part of the shutdown hangs
    children.signal()
    app.stop()  # returns within the grace period: running jobs are cancelled, not awaited
    children.wait(cfg.grace_s)
    left = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(JOB_THREAD_PREFIX) and t.is_alive()
    ]
    log.info("event=exit cancelled_job_threads=%s", left)
    if left:
        # A cancelled job may sit in torch/C++ code: interpreter finalisation would kill its
        # daemon thread there and abort the process (std::terminate). Everything durable is
        # closed by now (ledger, pool, leases released), so leave without finalising.
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
