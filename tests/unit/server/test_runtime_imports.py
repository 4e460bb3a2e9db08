"""The serving runtime (batcher, models, pool writer, service) imports neither gRPC nor stubs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RUNTIME = ("server.batcher", "server.models", "server.poolwriter", "server.service")


def test_runtime_modules_import_with_grpc_unimportable() -> None:
    # A fresh interpreter, so modules other tests imported do not hide an import.
    code = textwrap.dedent(
        f"""
        import importlib, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "grpc" or name.startswith(("grpc.", "grpc_", "postclf.v1")):
                    raise ImportError(f"blocked for this test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for name in {RUNTIME!r}:
            importlib.import_module(name)
        prefixes = ("grpc.", "postclf.v1")
        leaked = sorted(m for m in sys.modules if m == "grpc" or m.startswith(prefixes))
        assert not leaked, leaked
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_blocker_does_block_grpc() -> None:
    """The check above is only worth something if importing the servicer fails under it."""
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "grpc" or name.startswith("grpc."):
                    raise ImportError("blocked")
                return None

        sys.meta_path.insert(0, Block())
        import server.servicer
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert "blocked" in out.stderr
