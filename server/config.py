"""Server configuration: frozen dataclasses built once from a TOML file plus the environment.

Precedence: defaults < file (`--config` or POSTCLF_CONFIG) < environment variables.
File layout: top-level keys of `ServerConfig`, and sections [batcher], [limits], [auth], [tls];
a [jobs] section is passed through untouched to the batch jobs' config builder.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_jobs.config import build_config
from batch_jobs.datasets import DEFAULT_DATA_DIR
from postclf_errors import InvalidInputError

EVENT_LOOPS = ("uvloop", "asyncio")
MAX_QUIET_TICKS = 100_000  # BatcherConfig.quiet_ticks, checked in load_config


@dataclass(frozen=True)
class BatcherConfig:
    """Dynamic micro-batching of concurrent Classify calls; max_batch=1 or max_delay_ms=0: off."""

    max_batch: int = 256  # posts merged into one forward pass (one bigger call is still one batch)
    max_delay_ms: float = 2.0  # longest a call waits for others to join its batch
    # Event-loop iterations in a row with no new call before a batch runs (server/batcher.py):
    # more gathers bigger batches under load, and delays a lone call by as many iterations.
    quiet_ticks: int = 16
    # A batch of at least this many posts runs on the forward thread, without the GIL
    # (model/scripted.py), while the loop serves other calls; smaller ones run inline, where a
    # hand-off costs more than they do. 0: every batch inline. Chosen by bench.serving (README).
    offload_posts: int = 32

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1 and self.max_delay_ms > 0


@dataclass(frozen=True)
class LimitsConfig:
    max_posts_per_call: int = 4096  # Classify / IngestPosts; more → RESOURCE_EXHAUSTED
    max_labels_per_call: int = 10_000  # SubmitLabels
    max_message_bytes: int = 64 * 1024 * 1024  # grpc.max_receive_message_length
    # |embedding value| above this → INVALID_ARGUMENT (real embeddings are O(1); 1e38 would
    # overflow the network). An output still non-finite is rejected too (never NaN under OK).
    max_abs_value: float = 1e6
    default_top_k: int = 3


@dataclass(frozen=True)
class AuthConfig:
    """Bearer token per service group; None = that group is open."""

    classify_token: str | None = None  # Classify, IngestPosts, GetModelInfo
    labels_token: str | None = None  # SubmitLabels
    admin_token: str | None = None  # Admin/*


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None  # set: clients must present a certificate it signed

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


@dataclass(frozen=True)
class ServerConfig:
    home: Path = Path("var")  # POSTCLF_HOME: ledger, pool, model registry, exports
    # gRPC bind address. Loopback by default; bound anywhere else ("[::]", "0.0.0.0", an
    # interface address), Admin calls are refused unless auth.admin_token is set.
    host: str = "localhost"
    grpc_port: int = 50051  # 0 = pick a free port
    metrics_host: str = "127.0.0.1"  # Prometheus HTTP bind address ("0.0.0.0": every interface)
    metrics_port: int | None = 9095  # Prometheus HTTP; None = off, 0 = pick a free port
    processes: int = 1  # server processes sharing the port (SO_REUSEPORT); one per core
    reuse_port: bool = False  # SO_REUSEPORT (forced on when processes > 1)
    torch_threads: int = (
        1  # torch and BLAS threads per process (0 = their defaults); scale by processes
    )
    # The server's asyncio event loop: "uvloop" (libuv, Cython; default) or "asyncio" (the
    # standard library's). bench.serving measured uvloop faster for both postclf and a bare echo.
    event_loop: str = "uvloop"
    workers: int = 64  # threads for blocking RPCs (labels, ingest, jobs)
    grace_s: float = 10.0  # shutdown: in-flight calls get this long to finish
    model_poll_s: float = 5.0  # how often the registry's CURRENT pointer is checked
    pool_queue_batches: int = 4096  # pending pool writes before Classify waits (no drops)
    # How long the pool writer gathers Classify's best-effort entries into one durable write
    # (0: write what is queued at once). IngestPosts never waits for it. 20: README, serving.
    pool_linger_ms: float = 20.0
    bootstrap: bool = True  # train the demo model when the registry is empty
    bootstrap_data: Path = DEFAULT_DATA_DIR / "reviews.npz"
    # Share of each class's train rows the demo pools unlabeled, so the first nightly has real
    # posts to query (0: every train row labeled).
    bootstrap_unlabeled_share: float = 0.5
    scheduler: bool = True  # run the nightly job on `nightly_cron`
    nightly_cron: str = "0 3 * * *"
    log_level: str = "INFO"
    # Fault-injection tests only ("point=kill|term|hang,...", see batch_jobs/faults.py).
    fault_points: str = ""
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    jobs: Mapping[str, Any] = field(default_factory=dict)  # raw [jobs] section


# environment variable → (section or "" for top level, key)
ENV_KEYS: dict[str, tuple[str, str]] = {
    "POSTCLF_HOME": ("", "home"),
    "POSTCLF_HOST": ("", "host"),
    "POSTCLF_GRPC_PORT": ("", "grpc_port"),
    "POSTCLF_METRICS_HOST": ("", "metrics_host"),
    "POSTCLF_METRICS_PORT": ("", "metrics_port"),
    "POSTCLF_WORKERS": ("", "workers"),
    "POSTCLF_EVENT_LOOP": ("", "event_loop"),
    "POSTCLF_POOL_LINGER_MS": ("", "pool_linger_ms"),
    "POSTCLF_TORCH_THREADS": ("", "torch_threads"),
    "POSTCLF_REUSE_PORT": ("", "reuse_port"),
    "POSTCLF_PROCESSES": ("", "processes"),
    "POSTCLF_GRACE_S": ("", "grace_s"),
    "POSTCLF_MODEL_POLL_S": ("", "model_poll_s"),
    "POSTCLF_BOOTSTRAP": ("", "bootstrap"),
    "POSTCLF_BOOTSTRAP_DATA": ("", "bootstrap_data"),
    "POSTCLF_BOOTSTRAP_UNLABELED_SHARE": ("", "bootstrap_unlabeled_share"),
    "POSTCLF_SCHEDULER": ("", "scheduler"),
    "POSTCLF_NIGHTLY_CRON": ("", "nightly_cron"),
    "POSTCLF_LOG_LEVEL": ("", "log_level"),
    "POSTCLF_FAULT_POINTS": ("", "fault_points"),
    "POSTCLF_MAX_BATCH": ("batcher", "max_batch"),
    "POSTCLF_MAX_DELAY_MS": ("batcher", "max_delay_ms"),
    "POSTCLF_QUIET_TICKS": ("batcher", "quiet_ticks"),
    "POSTCLF_OFFLOAD_POSTS": ("batcher", "offload_posts"),
    "POSTCLF_MAX_POSTS_PER_CALL": ("limits", "max_posts_per_call"),
    "POSTCLF_MAX_LABELS_PER_CALL": ("limits", "max_labels_per_call"),
    "POSTCLF_MAX_MESSAGE_BYTES": ("limits", "max_message_bytes"),
    "POSTCLF_MAX_ABS_VALUE": ("limits", "max_abs_value"),
    "POSTCLF_CLASSIFY_TOKEN": ("auth", "classify_token"),
    "POSTCLF_LABELS_TOKEN": ("auth", "labels_token"),
    "POSTCLF_ADMIN_TOKEN": ("auth", "admin_token"),
    "POSTCLF_TLS_CERT": ("tls", "cert_file"),
    "POSTCLF_TLS_KEY": ("tls", "key_file"),
    "POSTCLF_TLS_CLIENT_CA": ("tls", "client_ca_file"),
}

SECTIONS = {
    "batcher": BatcherConfig,
    "limits": LimitsConfig,
    "auth": AuthConfig,
    "tls": TlsConfig,
}


def _coerce(value: Any, annotation: str, name: str) -> Any:
    """Turn a file or environment value into the field's type (annotations are strings)."""
    if value is None or (isinstance(value, str) and value == "" and "None" in annotation):
        return None
    try:
        if annotation.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if annotation.startswith("int"):
            return int(value)
        if annotation.startswith("float"):
            return float(value)
        if annotation.startswith("Path"):
            return Path(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"cannot parse {value!r} as {annotation}", name) from exc
    return value


def load_config(path: Path | None, env: Mapping[str, str]) -> ServerConfig:
    """Build the one `ServerConfig` of the process from `path` (TOML, optional) and `env`."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = tomllib.loads(Path(path).read_text())
    sections: dict[str, dict[str, Any]] = {s: dict(raw.pop(s, {})) for s in SECTIONS}
    jobs = dict(raw.pop("jobs", {}))
    for var, (section, key) in ENV_KEYS.items():
        if var in env:
            (sections[section] if section else raw)[key] = env[var]
    top = build_config(ServerConfig, raw, "config", _coerce)
    if not 0.0 <= top.bootstrap_unlabeled_share < 1.0:
        raise InvalidInputError("must be in [0, 1)", "config.bootstrap_unlabeled_share")
    if top.event_loop not in EVENT_LOOPS:
        raise InvalidInputError(f"must be one of {EVENT_LOOPS}", "config.event_loop")
    if not 0.0 <= top.pool_linger_ms <= 1000.0:
        raise InvalidInputError("must be in [0, 1000] ms", "config.pool_linger_ms")
    built = {
        name: build_config(cls, sections[name], name, _coerce) for name, cls in SECTIONS.items()
    }
    if not 0 <= built["batcher"].quiet_ticks <= MAX_QUIET_TICKS:
        raise InvalidInputError(f"must be in [0, {MAX_QUIET_TICKS}]", "batcher.quiet_ticks")
    if built["batcher"].offload_posts < 0:
        raise InvalidInputError("must be ≥ 0 (0: every batch inline)", "batcher.offload_posts")
    return dataclasses.replace(top, jobs=jobs, **built)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether a bind address only reaches this host ("localhost", 127.x.y.z, "[::1]")."""
    bare = host.strip().strip("[]").lower()
    return bare in LOOPBACK_NAMES or bare.startswith("127.")


def admin_refusal(cfg: ServerConfig) -> str | None:
    """Why Admin must be refused (reachable from other hosts, no admin token), else None."""
    if cfg.auth.admin_token or is_loopback(cfg.host):
        return None
    return (
        f"Admin is disabled: the server listens on {cfg.host} (not loopback) and no "
        "admin_token is set (POSTCLF_ADMIN_TOKEN)"
    )
