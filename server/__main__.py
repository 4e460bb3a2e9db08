"""`python -m server [--config FILE]`: build the config, bootstrap, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path

import torch

from server.app import bootstrap_in_background, build_server
from server.config import load_config
from server.logs import setup_logging
from server.supervisor import signal_children, start_children, wait_children

log = logging.getLogger("server")


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
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)  # process-wide, so only at the entry point
    if cfg.processes > 1:
        cfg = dataclasses.replace(cfg, reuse_port=True)
    app = build_server(cfg)
    children = start_children(cfg, args.config, os.environ)
    if cfg.bootstrap:
        bootstrap_in_background(app, cfg.bootstrap_data)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("event=signal name=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    signal_children(children)
    app.stop()
    wait_children(children, cfg.grace_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
