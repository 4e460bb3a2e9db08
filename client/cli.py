"""Command-line client: `python -m client [--target H:P] [--token T] COMMAND ...`.

Commands: classify FILE.npz|FILE.parquet [--limit N] [--batch B] [--values] [--skip-pool];
ingest FILE [--limit N]; submit-labels FILE (a filled query.csv or any CSV with
post_id,label,assessor_id[,query_id], or Label Studio's JSON export: FILE.json);
model-info; health (exit 0 when SERVING); run-nightly [--dry-run] [--seed S]; retrain;
list-queries [--limit N]; assessors (quality per assessor, the excluded ones flagged).
Exit status: 0 done, 1 the call failed or the file is unreadable, 2 some labels rejected
(by the server, or rows of the file that hold no usable label: each is printed with why),
3 run-nightly/retrain did not run (ABORTED: its lease is held elsewhere; UNAVAILABLE: server
shutting down). Files hold `post_id` and `image`/`text` embeddings (all-NaN or null
row = missing view), like ../shared/data/reviews.npz.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from batch_jobs.datasets import read_arrays
from batch_jobs.label_files import read_labels_file
from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from postclf_errors import InvalidInputError, NotFoundError

MAX_MESSAGE = 256 * 1024 * 1024
LABELS_PER_CALL = 5000  # under the server's default max_labels_per_call (10k)


def load_posts_file(
    path: Path, limit: int | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """`(post_ids (n,), image (n, di) | None, text (n, dt) | None)`, NaN rows = missing."""
    arrays = read_arrays(path)  # the data sets' one reader (.npz / .parquet)
    if "post_id" not in arrays:
        raise InvalidInputError(f"{path} has no post_id column", "post_id")
    rows = slice(0, limit)
    image, text = arrays.get("image"), arrays.get("text")
    return (
        np.asarray(arrays["post_id"][rows]).astype(str),
        None if image is None else image[rows],
        None if text is None else text[rows],
    )


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def cmd_classify(args: argparse.Namespace, stub: pb_grpc.PostClassifierStub, md: list) -> int:
    ids, image, text = load_posts_file(args.file, args.limit)
    out = csv.writer(sys.stdout)
    out.writerow(["post_id", "label", "confidence", "head", "model_version"])
    for part in _batches(len(ids), args.batch):
        posts = arrays_to_posts(
            ids[part],
            None if image is None else image[part],
            None if text is None else text[part],
            as_bytes=not args.values,
        )
        reply = stub.Classify(
            pb.ClassifyRequest(posts=posts, skip_pool=args.skip_pool),
            metadata=md,
            timeout=args.timeout,
        )
        for p in reply.predictions:
            out.writerow([p.post_id, p.label, f"{p.confidence:.4f}", p.head, p.model_version])
    return 0


def cmd_ingest(args: argparse.Namespace, stub: pb_grpc.PostClassifierStub, md: list) -> int:
    ids, image, text = load_posts_file(args.file, args.limit)
    accepted = duplicates = 0
    for part in _batches(len(ids), args.batch):
        posts = arrays_to_posts(
            ids[part], None if image is None else image[part], None if text is None else text[part]
        )
        reply = stub.IngestPosts(
            pb.IngestPostsRequest(posts=posts), metadata=md, timeout=args.timeout
        )
        accepted, duplicates = accepted + reply.accepted, duplicates + reply.duplicates
    print(f"accepted={accepted} duplicates={duplicates}")
    return 0


def cmd_submit_labels(args: argparse.Namespace, stub: pb_grpc.PostClassifierStub, md: list) -> int:
    """Send every usable row (in calls of LABELS_PER_CALL); the unusable ones are printed to
    stderr with their reason and never cost a good row its place."""
    try:
        rows, problems = read_labels_file(args.file)
    except InvalidInputError as err:
        print(f"submit-labels: {err}", file=sys.stderr)
        return EXIT_ERROR
    for why in problems:
        print(f"submit-labels: {args.file}: {why} (not sent)", file=sys.stderr)
    total = pb.SubmitLabelsResponse()
    for part in _batches(len(rows), LABELS_PER_CALL):
        labels = [
            pb.Label(
                post_id=r.post_id,
                label=r.label,
                assessor_id=r.assessor_id,
                query_id=r.query_id or "",
            )
            for r in rows[part]
        ]
        reply = stub.SubmitLabels(
            pb.SubmitLabelsRequest(labels=labels), metadata=md, timeout=args.timeout
        )
        total.accepted += reply.accepted
        total.duplicates += reply.duplicates
        for rej in reply.rejected:  # indices into the file's usable rows, not the call's
            total.rejected.add(
                index=rej.index + part.start,
                post_id=rej.post_id,
                field=rej.field,
                reason=rej.reason,
            )
    _print(total)
    return 0 if not total.rejected and not problems else EXIT_REJECTED


def cmd_health(args: argparse.Namespace, channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as err:
        print(f"health: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _print(message: object) -> int:
    text = json_format.MessageToJson(
        message,  # type: ignore[arg-type]
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
    )
    print(text)
    return 0


def run(args: argparse.Namespace) -> int:
    channel = open_channel(args.target, args.tls_ca)
    md = [("authorization", f"Bearer {args.token}")] if args.token else []
    stub, admin = pb_grpc.PostClassifierStub(channel), pb_grpc.AdminStub(channel)
    t = args.timeout
    match args.command:
        case "classify":
            return cmd_classify(args, stub, md)
        case "ingest":
            return cmd_ingest(args, stub, md)
        case "submit-labels":
            return cmd_submit_labels(args, stub, md)
        case "health":
            return cmd_health(args, channel)
        case "model-info":
            return _print(stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=t))
        case "run-nightly":
            req = pb.RunNightlyRequest(dry_run=args.dry_run, seed=args.seed)
            return _print(admin.RunNightly(req, metadata=md, timeout=t))
        case "retrain":
            req = pb.RetrainRequest(force=args.force)
            return _print(admin.Retrain(req, metadata=md, timeout=t))
        case "list-queries":
            req = pb.ListQueriesRequest(limit=args.limit)
            return _print(admin.ListQueries(req, metadata=md, timeout=t))
        case "assessors":
            return _print(admin.ListAssessors(pb.ListAssessorsRequest(), metadata=md, timeout=t))
    raise SystemExit(f"unknown command {args.command}")


def open_channel(target: str, tls_ca: Path | None) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    if tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_target = f"localhost:{os.environ.get('POSTCLF_GRPC_PORT', '50051')}"
    p.add_argument(
        "--target",
        default=os.environ.get("POSTCLF_TARGET", default_target),
        help="host:port (default: $POSTCLF_TARGET, else localhost:$POSTCLF_GRPC_PORT)",
    )
    p.add_argument(
        "--token", default=os.environ.get("POSTCLF_TOKEN"), help="default: $POSTCLF_TOKEN"
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("POSTCLF_TLS_CA"),
        help="CA certificate: use TLS (default: $POSTCLF_TLS_CA)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("classify", "ingest"):
        c = sub.add_parser(name)
        c.add_argument("file", type=Path)
        c.add_argument("--limit", type=int, default=None)
        c.add_argument("--batch", type=int, default=256, help="posts per call")
        c.add_argument("--values", action="store_true", help="send repeated float, not bytes")
        c.add_argument("--skip-pool", action="store_true")
    sub.add_parser("submit-labels").add_argument("file", type=Path)
    sub.add_parser("health").add_argument("--service", default="")
    sub.add_parser("model-info")
    nightly = sub.add_parser("run-nightly")
    nightly.add_argument("--dry-run", action="store_true")
    nightly.add_argument("--seed", type=int, default=0)
    sub.add_parser("retrain").add_argument("--force", action="store_true")
    sub.add_parser("list-queries").add_argument("--limit", type=int, default=0)
    sub.add_parser("assessors")
    return p


EXIT_ERROR = 1  # the call failed
EXIT_REJECTED = 2  # submit-labels: some labels were rejected (the rest are stored)
EXIT_NOT_RUN = 3  # run-nightly / retrain: the job did not run (ABORTED: another holder has
# its lease; UNAVAILABLE: the server is shutting down and cancelled it)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as err:
        code = err.code()
        print(f"error: {code.name}: {err.details()}", file=sys.stderr)
        job = args.command in ("run-nightly", "retrain")
        if job and code in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
            print(f"{args.command}: the job did not run", file=sys.stderr)
            return EXIT_NOT_RUN
        return EXIT_ERROR
    except (InvalidInputError, NotFoundError) as err:  # a bad or missing input file
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `... | head`: the reader left; end quietly, as CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
