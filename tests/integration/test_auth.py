"""Bearer tokens per service group: missing → UNAUTHENTICATED, wrong → PERMISSION_DENIED."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from postclf.v1 import postclf_pb2 as pb
from server.config import AuthConfig
from tests.integration.support import Running, SmallData, install_model

TOKENS = AuthConfig(classify_token="c-secret", labels_token="l-secret", admin_token="a-secret")


@pytest.fixture
def secured(start_server: Callable[..., Running], model_registry: Path, tmp_path: Path) -> Running:
    install_model(model_registry, tmp_path / "auth")
    return start_server(tmp_path / "auth", auth=TOKENS)


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _code(fn: Callable[[], object]) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_tokens_per_group(secured: Running, data: SmallData) -> None:
    classify = pb.ClassifyRequest(posts=data.posts(slice(0, 2)))
    call = secured.classifier.Classify
    assert _code(lambda: call(classify)) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: call(classify, metadata=_md("nope"))) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: call(classify, metadata=_md("c-secret"))) == grpc.StatusCode.OK
    labels = pb.SubmitLabelsRequest(
        labels=[pb.Label(post_id=data.post_ids[0], label=data.classes[0], assessor_id="a")]
    )
    submit = secured.classifier.SubmitLabels
    assert (
        _code(lambda: submit(labels, metadata=_md("c-secret"))) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(lambda: submit(labels, metadata=_md("l-secret"))) == grpc.StatusCode.OK
    queries = secured.admin.ListQueries
    assert _code(lambda: queries(pb.ListQueriesRequest())) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: queries(pb.ListQueriesRequest(), metadata=_md("l-secret"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(lambda: queries(pb.ListQueriesRequest(), metadata=_md("a-secret"))) == (
        grpc.StatusCode.OK
    )


def test_health_needs_no_token(secured: Running) -> None:
    stub = health_pb2_grpc.HealthStub(secured.channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_off_loopback_without_admin_token_refuses_admin_only(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    install_model(model_registry, tmp_path / "open")
    running = start_server(tmp_path / "open", host="0.0.0.0")
    nightly = lambda: running.admin.RunNightly(pb.RunNightlyRequest(dry_run=True))  # noqa: E731
    with pytest.raises(grpc.RpcError) as err:
        nightly()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin_token" in (err.value.details() or "")
    posts = data.posts(slice(0, 2))
    classify = lambda: running.classifier.Classify(pb.ClassifyRequest(posts=posts))  # noqa: E731
    assert _code(classify) == grpc.StatusCode.OK


def test_off_loopback_with_admin_token_serves_admin(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path
) -> None:
    install_model(model_registry, tmp_path / "tok")
    running = start_server(tmp_path / "tok", host="0.0.0.0", auth=AuthConfig(admin_token="s"))
    queries = lambda md: running.admin.ListQueries(pb.ListQueriesRequest(), metadata=md)  # noqa: E731
    assert _code(lambda: queries(())) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: queries(_md("s"))) == grpc.StatusCode.OK


def test_defaults_bind_loopback_only() -> None:
    from server.config import ServerConfig, admin_refusal, is_loopback

    cfg = ServerConfig()
    assert is_loopback(cfg.host) and is_loopback(cfg.metrics_host)
    assert admin_refusal(cfg) is None
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "[::1]", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("[::]", "0.0.0.0", "10.0.0.5", ""))
