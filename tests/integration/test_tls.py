"""TLS: with a certificate and key configured the server only speaks TLS."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from server.config import TlsConfig
from tests.integration.support import Running, SmallData, install_model


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_classify_over_tls(
    start_server: Callable[..., Running], model_registry: Path, tmp_path: Path, data: SmallData
) -> None:
    cert, key = _self_signed(tmp_path)
    install_model(model_registry, tmp_path / "tls")
    running = start_server(tmp_path / "tls", tls=TlsConfig(cert_file=cert, key_file=key))
    target = f"127.0.0.1:{running.app.port}"
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(target, creds) as channel:
        stub = pb_grpc.PostClassifierStub(channel)
        reply = stub.Classify(pb.ClassifyRequest(posts=data.posts(slice(0, 2))), timeout=10)
        assert len(reply.predictions) == 2
    with pytest.raises(grpc.RpcError) as err:  # plaintext is refused
        running.classifier.Classify(pb.ClassifyRequest(posts=data.posts(slice(0, 2))), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
