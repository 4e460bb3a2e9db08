"""One decorator that turns the domain's typed errors into gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from postclf_errors import (
    ConflictError,
    DeadlineExpiredError,
    InvalidInputError,
    JobCancelledError,
    ModelUnavailableError,
    NotFoundError,
    TooLargeError,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


# Checked in order: the first matching class wins. A job that did not run leaves as ABORTED
# (JobBusyError: another live holder has its lease; LeaseLostError: it lost the lease before
# committing) or UNAVAILABLE (JobCancelledError: the server is shutting down), never as OK.
STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (TooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (JobCancelledError, grpc.StatusCode.UNAVAILABLE),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.ABORTED),  # JobBusyError, LeaseLostError
    (DeadlineExpiredError, grpc.StatusCode.DEADLINE_EXCEEDED),
)

FIELD_METADATA_KEY = "postclf-field"


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return None


def grpc_errors(method: F) -> F:
    """Wrap an async servicer method: domain errors leave via `context.abort` with their status.

    InvalidInputError also names the field in the trailing metadata `postclf-field`. Anything
    unexpected is logged with its traceback and leaves as INTERNAL without internals.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            code = status_for(exc)
            if code is None:
                if _is_abort(exc):
                    raise
                log.exception("event=unhandled_error method=%s", method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            field = getattr(exc, "field", "")
            if field:
                context.set_trailing_metadata(((FIELD_METADATA_KEY, field),))
            await context.abort(code, str(exc) or type(exc).__name__)

    return wrapper  # type: ignore[return-value]


def _is_abort(exc: BaseException) -> bool:
    """`context.abort` raises a plain Exception subclass internal to grpc; let it through."""
    return type(exc).__module__.startswith("grpc")
