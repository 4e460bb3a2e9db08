"""gRPC server interceptors: per-call metrics (auth lives in server/auth.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from server.metrics import Metrics


def _method_name(full: str) -> str:
    return full.rsplit("/", 1)[-1] if full else "unknown"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts unary calls by method and final status code and times them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        name = _method_name(handler_call_details.method)
        inner = handler.unary_unary
        metrics = self.metrics

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.requests.labels(name, code.name).inc()
                metrics.latency.labels(name).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
