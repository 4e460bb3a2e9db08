"""gRPC server interceptors: per-call metrics (auth lives in server/auth.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from server.metrics import Metrics


def _method_name(full: str) -> str:
    return full.rsplit("/", 1)[-1] if full else "unknown"


MAX_CACHED_HANDLERS = 64  # timed twins kept (one per method; refusals are not kept past it)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts unary calls by method and final status code and times them.

    The interceptor runs on the event loop for every call, so the timed handler is built once
    per method handler and reused, with its metric children looked up once: the per-call work
    is two dict reads and the measurement itself. Every unary handler of this server is async
    (servicer.py, and gRPC's asyncio health and reflection servicers)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._timed: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        timed = self._timed.get(handler)
        if timed is None:
            timed = self._wrap(handler, _method_name(handler_call_details.method))
            if len(self._timed) < MAX_CACHED_HANDLERS:
                self._timed[handler] = timed
        return timed

    def _wrap(self, handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        latency = self.metrics.latency.labels(name)
        requests = self.metrics.requests
        counters: dict[grpc.StatusCode, Any] = {}  # status code → its counter child

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                counter = counters.get(code)
                if counter is None:
                    counter = counters[code] = requests.labels(name, code.name)
                counter.inc()
                latency.observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
