"""The ray runner (Ray Data, actor pool) in local mode selects the query the local runner does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import ray

from batch_jobs.config import EngineConfig
from batch_jobs.nightly import run_nightly

pytestmark = pytest.mark.slow  # `make test-fast` (-m 'not slow') leaves it out


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("strategy", ["margin", "bald", "random"])
def test_ray_selects_what_local_selects(paths, job_cfg, local_ray, strategy):
    query = replace(job_cfg.query, strategy=strategy, diversity="kmeans", balance=True)
    cfg = replace(job_cfg, query=query, engine=EngineConfig(chunk_rows=128))
    local = run_nightly(paths, cfg, dry_run=True)
    on_ray = run_nightly(
        paths, replace(cfg, engine=replace(cfg.engine, engine="ray", workers=2)), dry_run=True
    )
    assert local.status == on_ray.status == "dry_run" and len(local.post_ids) == 20
    assert on_ray.post_ids == local.post_ids
    assert on_ray.eligible == local.eligible == 216
    assert on_ray.predicted_histogram == local.predicted_histogram
