"""CLI: `python -m batch_jobs [--config FILE] [--home DIR] {nightly,retrain,bootstrap}`.

Reads the same `[jobs]` table of the config file as the server; prints the report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from batch_jobs.config import JobConfig, Paths, load_job_file
from batch_jobs.datasets import DEFAULT_DATA_DIR
from postclf_errors import JobBusyError

DEFAULT_DATA = DEFAULT_DATA_DIR / "reviews.npz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m batch_jobs", description=__doc__)
    ap.add_argument("--home", type=Path, default=None, help="state folder (env POSTCLF_HOME)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON only")
    ap.add_argument(
        "--config", type=Path, default=None,
        help="server config file: its home and [jobs] table (env POSTCLF_CONFIG)",
    )  # fmt: skip
    sub = ap.add_subparsers(dest="command", required=True)
    night = sub.add_parser("nightly", help="retrain, propose and export tonight's query")
    night.add_argument("--dry-run", action="store_true", help="write nothing, show the query")
    night.add_argument("--night", type=date.fromisoformat, default=None, help="YYYY-MM-DD")
    night.add_argument("--strategy", default=None, help="override the query strategy")
    night.add_argument("--query-size", type=int, default=None)
    night.add_argument("--engine", choices=["local", "ray"], default=None, help="scoring engine")
    night.add_argument("--workers", type=int, default=None, help="scoring processes or actors")
    re = sub.add_parser("retrain", help="fold new labels in and gate the candidate")
    re.add_argument("--force", action="store_true", help="even with few new labels")
    boot = sub.add_parser("bootstrap", help="train and promote the first model if none exists")
    boot.add_argument("--data", type=Path, default=None, help="labeled .npz (env POSTCLF_DATA)")
    boot.add_argument(
        "--unlabeled-share",
        type=float,
        default=0.0,
        help="share of each class's train rows pooled without a label (0 ≤ x < 1)",
    )
    return ap.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[Paths, JobConfig]:
    """Entry point: the one place that reads the environment."""
    config = args.config or os.environ.get("POSTCLF_CONFIG")
    file_home, cfg = load_job_file(Path(config)) if config else (None, JobConfig())
    home = args.home or Path(os.environ.get("POSTCLF_HOME") or file_home or "var")
    flag = vars(args).get  # nightly's flags; None when not given (or another command)
    cfg = replace(
        cfg,
        engine=_with(cfg.engine, engine=flag("engine"), workers=flag("workers")),
        query=_with(cfg.query, strategy=flag("strategy"), query_size=flag("query_size")),
    )
    return Paths(home), cfg


def _with(obj: Any, **values: Any) -> Any:
    """`obj` with the fields given on the command line replaced (None = not given)."""
    given = {k: v for k, v in values.items() if v is not None}
    return replace(obj, **given) if given else obj


def print_report(report: dict[str, Any], as_json: bool) -> None:
    timings = report.get("timings") or report.get("seconds") or {}
    print(json.dumps(report, indent=2, default=str))
    if as_json or not timings:
        return
    print(f"\n{'stage':<22} {'seconds':>9}")
    for name, secs in timings.items():
        print(f"{name:<22} {secs:>9.3f}")


EXIT_NOT_RUN = 3  # the job did not run: a live process holds its lease (as the client CLI)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        return _run(args)
    except JobBusyError as err:
        print(f"{args.command}: the job did not run: {err}", file=sys.stderr)
        return EXIT_NOT_RUN


def _run(args: argparse.Namespace) -> int:
    paths, cfg = build(args)
    if args.command == "nightly":
        from batch_jobs.nightly import run_nightly

        rep = run_nightly(
            paths, cfg, night=args.night, dry_run=args.dry_run, progress=sys.stderr.isatty()
        )
        print_report(rep.to_dict(), args.json)
    elif args.command == "retrain":
        from batch_jobs.retrain import retrain

        print_report(retrain(paths, cfg, force=args.force).to_dict(), args.json)
    else:
        from batch_jobs.bootstrap import ensure_model

        data = args.data or Path(os.environ.get("POSTCLF_DATA", DEFAULT_DATA))
        print_report(
            {"current_version": ensure_model(paths, cfg, data, args.unlabeled_share)}, args.json
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
