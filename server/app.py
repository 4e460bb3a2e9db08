"""Build and start the whole server in one function; `App.stop()` shuts it down gracefully.

gRPC runs as its asyncio server on an event loop in a thread of its own (`ServerLoop`), so the
rest of the process (jobs, scheduler, model watcher, pool writer, tests) stays plain threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # health.aio's, the asyncio servicer
from grpc_reflection.v1alpha import reflection

from batch_jobs import faults as fault_points
from batch_jobs.config import JobConfig, Paths
from batch_jobs.stores import open_ledger, open_pool
from model.registry import ModelRegistry
from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from postclf_errors import JobBusyError, JobCancelledError
from server.auth import TokenAuthInterceptor
from server.batcher import Batcher
from server.config import ServerConfig, admin_refusal
from server.interceptors import MetricsInterceptor
from server.jobs import Jobs
from server.metrics import Metrics
from server.models import ModelHolder, ServedModel
from server.poolwriter import PoolWriter
from server.service import PostService
from server.servicer import AdminServicer, PostClassifierServicer

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class App:
    """A running server and everything it owns."""

    cfg: ServerConfig
    loop: ServerLoop
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service: PostService
    blocking: futures.ThreadPoolExecutor
    forward: futures.ThreadPoolExecutor
    metrics_port: int | None = None
    metrics_httpd: Any = None
    scheduler: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def holder(self) -> ModelHolder:
        return self.service.holder

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish, flush the pool, close the ledger."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.cfg.grace_s if grace is None else grace
        log.info("event=shutdown_started grace_s=%s", grace)
        self.loop.run(self.health.enter_graceful_shutdown())
        # Jobs first: from here on none promotes, and their callers get UNAVAILABLE now
        # instead of holding the grace period (their threads die with the process).
        self.service.jobs.scope.close()
        fault_points.shutdown_began()  # after close(): a `term` fault point resumes cancelled
        self.loop.run(self.server.stop(grace))
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        svc = self.service
        cancelled = svc.jobs.scope.abandon(svc.ledger)  # free their leases for the next start
        if cancelled:
            log.warning("event=jobs_cancelled jobs=%s", cancelled)
        svc.holder.stop()
        self.loop.close()
        self.blocking.shutdown(wait=False, cancel_futures=True)  # jobs were cancelled above
        self.forward.shutdown(wait=False, cancel_futures=True)  # its callers are gone with the loop
        svc.writer.close()  # drains queued pool writes, then flushes the pool buffer
        svc.ledger.close()
        if self.metrics_httpd is not None:
            self.metrics_httpd.shutdown()
            self.metrics_httpd.server_close()
        log.info("event=shutdown_done pool_posts=%d", len(svc.pool))

    def wait(self) -> None:
        self._stopped.wait()


class ServerLoop:
    """An asyncio event loop running in its own daemon thread; `run` waits for a coroutine.
    `kind`: "uvloop" (libuv's loop; gRPC's asyncio server runs on any asyncio loop) or
    "asyncio" (the standard library's)."""

    def __init__(self, kind: str = "uvloop") -> None:
        self.loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run `coro` on the loop and wait for its result (never call it from the loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


def _grpc_server(cfg: ServerConfig, metrics: Metrics) -> grpc.aio.Server:
    size = cfg.limits.max_message_bytes
    return grpc.aio.server(
        interceptors=[
            MetricsInterceptor(metrics),
            TokenAuthInterceptor(cfg.auth, admin_refusal(cfg)),
        ],
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", int(cfg.reuse_port)),
        ],
    )


def _bind(server: grpc.aio.Server, cfg: ServerConfig) -> int:
    address = f"{cfg.host}:{cfg.grpc_port}"
    tls = cfg.tls
    if tls.enabled:
        assert tls.cert_file is not None and tls.key_file is not None  # `enabled` says so
        ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        creds = grpc.ssl_server_credentials(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"could not bind {address}")
    return port


def _register(
    server: grpc.aio.Server,
    service: PostService,
    hs: HealthServicer,
    cfg: ServerConfig,
    blocking: futures.Executor,
) -> grpc.aio.Server:
    pb_grpc.add_PostClassifierServicer_to_server(
        PostClassifierServicer(service, cfg.limits, blocking), server
    )
    pb_grpc.add_AdminServicer_to_server(AdminServicer(service, blocking), server)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server


async def _set_health(hs: HealthServicer, status: Any) -> None:
    for name in ("", *SERVICE_NAMES):
        await hs.set(name, status)


def _on_model(loop: ServerLoop, hs: HealthServicer, metrics: Metrics) -> Any:
    def changed(model: ServedModel) -> None:
        metrics.model.info({"version": model.version})
        # Called by the model watcher, bootstrap or a job's thread, never on the loop.
        loop.run(_set_health(hs, SERVING), timeout=10)

    return changed


def _build_service(
    cfg: ServerConfig,
    paths: Paths,
    jobs: Jobs,
    metrics: Metrics,
    on_change: Any,
    blocking: futures.Executor,
    forward: futures.Executor,
) -> PostService:
    jc = jobs.cfg
    ledger, pool = open_ledger(paths, jc), open_pool(paths, jc)
    metrics.pool_size.set_function(lambda: len(pool))
    registry = ModelRegistry(paths.models)
    holder = ModelHolder(registry, cfg.model_poll_s, on_change=on_change)
    return PostService(
        holder=holder,
        registry=registry,
        batcher=Batcher(holder, cfg.batcher, metrics, forward),
        writer=PoolWriter(pool, ledger, metrics, cfg.pool_queue_batches, cfg.pool_linger_ms / 1000),
        ledger=ledger,
        pool=pool,
        metrics=metrics,
        jobs=jobs,
    )


async def _start(
    cfg: ServerConfig,
    metrics: Metrics,
    service: PostService,
    hs: HealthServicer,
    blocking: futures.Executor,
) -> tuple[grpc.aio.Server, int]:
    """Created on the loop: gRPC's asyncio server binds to the loop it is created on."""
    server = _register(_grpc_server(cfg, metrics), service, hs, cfg, blocking)
    port = _bind(server, cfg)
    await server.start()
    return server, port


def build_server(cfg: ServerConfig, job_cfg: JobConfig | None = None) -> App:
    """Start gRPC (NOT_SERVING until a model loads), the model watcher, metrics, scheduler."""
    paths = Paths(Path(cfg.home))
    jobs = Jobs(paths, job_cfg or JobConfig.from_dict(dict(cfg.jobs)))
    recovered = jobs.recover()  # a job killed in an earlier life: its run, lease, temp files
    log.info("event=recovered leases=%s", recovered)
    metrics = Metrics()
    loop = ServerLoop(cfg.event_loop)
    hs = HealthServicer()
    loop.run(_set_health(hs, NOT_SERVING))
    # Blocking RPC work (labels, ingest, jobs); the forward thread: big Classify batches.
    blocking = futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="grpc")
    forward = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
    on_model = _on_model(loop, hs, metrics)
    service = _build_service(cfg, paths, jobs, metrics, on_model, blocking, forward)
    # Load an existing model before listening: a process sharing the port (reuse_port) must
    # not take calls it cannot answer. With an empty registry this returns at once.
    service.holder.start()
    server, port = loop.run(_start(cfg, metrics, service, hs, blocking))
    app = App(
        cfg=cfg,
        loop=loop,
        server=server,
        port=port,
        health=hs,
        service=service,
        blocking=blocking,
        forward=forward,
    )
    if cfg.metrics_port is not None:
        app.metrics_httpd, app.metrics_port = metrics.serve(
            cfg.metrics_host.strip("[]"), cfg.metrics_port
        )
    if cfg.scheduler:
        nightly = functools.partial(service.run_nightly, dry_run=False, seed=None)
        app.scheduler = jobs.build_scheduler(nightly, cfg.nightly_cron)
        app.scheduler.start()
    if admin_refusal(cfg):
        log.warning("event=admin_disabled reason=%r", admin_refusal(cfg))
    log.info(
        "event=server_started port=%d metrics_port=%s tls=%s batching=%s model=%s",
        port,
        app.metrics_port,
        cfg.tls.enabled,
        cfg.batcher.enabled,
        service.holder.current and service.holder.current.version,
    )
    return app


def bootstrap_in_background(
    app: App, data_path: Path, unlabeled_share: float = 0.0
) -> threading.Thread:
    """Train the demo model when the registry is empty, then load it (health turns SERVING)."""

    def run() -> None:
        while not app._stopped.is_set():
            try:
                app.service.jobs.ensure_model(data_path, unlabeled_share)
                app.holder.refresh()
                return
            except JobBusyError as err:  # another live process bootstraps: wait, then retry
                log.info("event=bootstrap_waiting holder=%s", err.holder)
                app._stopped.wait(max(1.0, min(15.0, err.expires_at - time.time())))
            except JobCancelledError:
                return
            except Exception:
                log.exception("event=bootstrap_failed data=%s", data_path)
                return

    thread = threading.Thread(target=run, name="bootstrap", daemon=True)
    thread.start()
    return thread
