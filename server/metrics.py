"""Prometheus metrics, one registry per server (filled by server/interceptors.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "postclf_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "postclf_request_seconds",
            "gRPC call latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_posts = Histogram(
            "postclf_batch_posts", "posts per forward pass", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_calls = Histogram(
            "postclf_batch_calls", "calls merged per forward pass", buckets=SIZE_BUCKETS, registry=r
        )
        self.queue_delay = Histogram(
            "postclf_queue_delay_seconds",
            "time a call waited for its batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.expired = Counter(
            "postclf_expired_calls", "calls dropped because their deadline passed", registry=r
        )
        self.model = Info("postclf_model", "the model version being served", registry=r)
        self.pool_size = Gauge("postclf_pool_posts", "posts in the unlabeled pool", registry=r)
        self.pool_pending = Gauge(
            "postclf_pool_pending_writes", "pool write batches not yet on disk", registry=r
        )
        self.pool_failures = Counter(
            "postclf_pool_write_failures", "pool write batches that failed", registry=r
        )
        self.labels = Counter(
            "postclf_labels", "labels received by outcome", ["outcome"], registry=r
        )

        self.nightly_seconds = Gauge(
            "postclf_nightly_stage_seconds",
            "wall seconds of each stage of the last nightly run",
            ["stage"],
            registry=r,
        )
        self.nightly_posts = Gauge(
            "postclf_nightly_posts",
            "posts of the last nightly run: scored, expired, skipped_<reason>",
            ["kind"],
            registry=r,
        )
        self.nightly_rss = Gauge(
            "postclf_nightly_peak_rss_bytes", "peak RSS after the last nightly run", registry=r
        )
        self.assessor_accuracy = Gauge(
            "postclf_assessor_accuracy",
            "assessor accuracy by source: control (known answers) or dawid_skene (estimate)",
            ["assessor", "source"],
            registry=r,
        )
        self.assessor_excluded = Gauge(
            "postclf_assessor_excluded",
            "1 when the assessor is below the quality floor and their labels are left out",
            ["assessor"],
            registry=r,
        )

    def observe_nightly(self, report: Any) -> None:
        """Per-stage seconds, posts scored/expired/skipped and peak RSS of a nightly report."""
        for stage, secs in report.timings.items():
            self.nightly_seconds.labels(stage).set(secs)
        self.nightly_posts.labels("scored").set(report.eligible)
        self.nightly_posts.labels("expired").set(report.expired)
        for reason, n in report.skipped.items():
            self.nightly_posts.labels(f"skipped_{reason}").set(n)
        self.nightly_rss.set(report.peak_rss_mb * 2**20)

    def observe_assessors(self, quality: list[dict[str, Any]]) -> None:
        """Per assessor (a retrain report's `aggregation.assessors`): accuracy on control
        items, DS estimate, excluded (1) or not (0)."""
        for q in quality:
            who = q["assessor_id"]
            if q.get("control_accuracy") is not None:
                self.assessor_accuracy.labels(who, "control").set(q["control_accuracy"])
            if q.get("ds_accuracy") is not None:
                self.assessor_accuracy.labels(who, "dawid_skene").set(q["ds_accuracy"])
            self.assessor_excluded.labels(who).set(int(bool(q.get("excluded"))))

    def observe_batch(self, posts: int, calls: int) -> None:
        self.batch_posts.observe(posts)
        self.batch_calls.observe(calls)

    def serve(self, host: str, port: int) -> tuple[Any, int]:
        """Start the /metrics HTTP server; returns it and its bound port."""
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        return httpd, int(httpd.server_port)
