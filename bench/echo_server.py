"""A bare gRPC server with postclf's Classify signature and server settings, answering at once.

The yardstick of bench/serving.py: the same grpcio, the same server kind (asyncio, as postclf's;
`--threads` for the thread-pool server it replaced), the same event loop (uvloop by default, as
postclf's; `--loop asyncio` for the standard library's) and message options, the same proto; no
interceptors, no validation, no model. Each reply holds one `Prediction` per post with only its
id, so the response size grows with the call as ours does.

    .venv/bin/python -m bench.echo_server --port 50099 [--loop asyncio] [--threads [--workers 64]]
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures

import grpc
import uvloop

from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc

MAX_MESSAGE = 64 * 1024 * 1024  # server/config.py LimitsConfig.max_message_bytes


def _echo(request: pb.ClassifyRequest) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        predictions=[pb.Prediction(post_id=p.post_id) for p in request.posts]
    )


class Echo(pb_grpc.PostClassifierServicer):
    def Classify(
        self, request: pb.ClassifyRequest, context: grpc.ServicerContext
    ) -> pb.ClassifyResponse:
        return _echo(request)


class AsyncEcho(pb_grpc.PostClassifierServicer):
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        return _echo(request)


OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]


async def serve_aio(port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    pb_grpc.add_PostClassifierServicer_to_server(AsyncEcho(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve(port: int, workers: int) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=OPTIONS,
    )
    pb_grpc.add_PostClassifierServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", action="store_true", help="the thread-pool server")
    p.add_argument("--workers", type=int, default=64, help="with --threads")
    p.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="postclf's event_loop"
    )
    args = p.parse_args()
    if args.threads:
        serve(args.port, args.workers)
    elif args.loop == "uvloop":
        uvloop.run(serve_aio(args.port))
    else:
        asyncio.run(serve_aio(args.port))


if __name__ == "__main__":
    main()
