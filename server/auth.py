"""Optional bearer tokens per service group (classify, labels, admin) as a server interceptor.

No token configured for a group: its calls are open. Configured: a call without
`authorization: Bearer <token>` gets UNAUTHENTICATED, one with another token PERMISSION_DENIED.
Health and reflection are always open. A server bound off loopback with no admin token
refuses every Admin call (PERMISSION_DENIED): Admin is never open to other hosts.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

from server.config import AuthConfig

# full method name prefix or name → group
GROUP_OF = {
    "/postclf.v1.PostClassifier/Classify": "classify",
    "/postclf.v1.PostClassifier/IngestPosts": "classify",
    "/postclf.v1.PostClassifier/GetModelInfo": "classify",
    "/postclf.v1.PostClassifier/SubmitLabels": "labels",
    "/postclf.v1.Admin/": "admin",
}


def group_of(method: str) -> str | None:
    if method in GROUP_OF:
        return GROUP_OF[method]
    service = method.rsplit("/", 1)[0] + "/"
    return GROUP_OF.get(service)


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, cfg: AuthConfig, admin_refusal: str | None = None) -> None:
        self.tokens = {
            "classify": cfg.classify_token,
            "labels": cfg.labels_token,
            "admin": cfg.admin_token,
        }
        self.admin_refusal = admin_refusal  # set: every Admin call is PERMISSION_DENIED

    @property
    def active(self) -> bool:
        return any(self.tokens.values())

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        group = group_of(handler_call_details.method)
        if group == "admin" and self.admin_refusal:
            return _deny(grpc.StatusCode.PERMISSION_DENIED, self.admin_refusal)
        expected = self.tokens.get(group) if group else None
        if not expected:
            return await continuation(handler_call_details)
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, f"a bearer token is required ({group})")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return _deny(grpc.StatusCode.PERMISSION_DENIED, f"token not valid for {group} calls")
        return await continuation(handler_call_details)
