"""The shared query policy: random control share, typicality cold start, config checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from batch_jobs.config import EngineConfig, QueryConfig
from batch_jobs.policy import CONTROL, control_count, propose_in_memory, propose_policy
from batch_jobs.scoring import MemorySource
from model.data import Views
from postclf_errors import InvalidInputError

SEED = (3, 11)


@pytest.fixture(scope="module")
def pool_views(small_npz) -> Views:
    return Views.from_nan_rows(small_npz["image"], small_npz["text"])


def test_control_count() -> None:
    assert [control_count(20, s) for s in (0.0, 0.01, 0.1, 0.5, 1.0)] == [0, 1, 2, 10, 20]


def test_control_share_is_random_distinct_and_labelled(tiny_model, pool_views) -> None:
    eligible = np.ones(len(pool_views), bool)
    eligible[:50] = False
    source = MemorySource(pool_views, eligible, 97)
    cfg = QueryConfig(query_size=20, random_share=0.25, diversity="kmeans", balance=True)
    got = propose_policy(tiny_model, None, source, cfg, EngineConfig(), SEED)
    keys = list(zip(got.parts.tolist(), got.indices.tolist(), strict=True))
    assert len(keys) == len(set(keys)) == 20 and eligible[got.indices].all()
    assert (got.reasons == CONTROL).sum() == 5 and (got.reasons[:5] == CONTROL).all()
    plain = propose_policy(
        tiny_model, None, source, replace(cfg, random_share=0.0), EngineConfig(), SEED
    )
    assert not (plain.reasons == CONTROL).any()
    again = propose_policy(tiny_model, None, source, cfg, EngineConfig(), SEED)
    assert again.indices.tolist() == got.indices.tolist()  # same seed, same query


def test_cold_start_below_the_threshold_only(tiny_model, pool_views) -> None:
    labeled = np.zeros(len(pool_views), bool)
    labeled[:30] = True
    cfg = QueryConfig(query_size=10, cold_start_labels=31, cold_start_sample=500, random_share=0.0)
    cold = propose_in_memory(tiny_model, pool_views, labeled, cfg, np.random.default_rng(0))
    assert (cold.reasons == "cold-start:typical").all() and not labeled[cold.indices].any()
    assert np.unique(cold.indices).shape == (10,)
    warm_cfg = replace(cfg, cold_start_labels=30)
    warm = propose_in_memory(tiny_model, pool_views, labeled, warm_cfg, np.random.default_rng(0))
    assert not (warm.reasons == "cold-start:typical").any()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"random_share": 1.5}, "random_share"),
        ({"random_share": -0.1}, "random_share"),
        ({"cold_start_labels": -1}, "cold_start_labels"),
        ({"cold_start_sample": 5}, "cold_start_sample"),
        ({"query_size": 0}, "query_size"),
        ({"diversity": "clusters"}, "diversity"),
    ],
)
def test_bad_policy_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        QueryConfig(**kwargs)
    assert err.value.field == field


def test_default_policy_is_diverse_and_balanced_and_none_turns_diversity_off() -> None:
    """The nightly default (chosen on the simulator) and the file spelling of "off"."""
    default = QueryConfig()
    assert (default.strategy, default.diversity, default.balance) == ("margin", "kmeans", True)
    assert QueryConfig(diversity="none").diversity is None
