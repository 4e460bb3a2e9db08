"""The example config file loads, and environment variables override it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_jobs.config import JobConfig
from postclf_errors import InvalidInputError
from server.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "server" / "postclf.example.toml"


def test_example_file_and_env_precedence() -> None:
    env = {"POSTCLF_GRPC_PORT": "7000", "POSTCLF_MAX_DELAY_MS": "0", "POSTCLF_METRICS_PORT": ""}
    cfg = load_config(EXAMPLE, env)
    assert cfg.grpc_port == 7000 and cfg.metrics_port is None
    assert not cfg.batcher.enabled and cfg.batcher.max_batch == 256
    assert JobConfig.from_dict(dict(cfg.jobs)).query.strategy == "margin"


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[batcher]\nmax_bacth = 3\n")
    with pytest.raises(InvalidInputError, match="max_bacth"):
        load_config(bad, {})


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("POSTCLF_BOOTSTRAP_UNLABELED_SHARE", "1.0", "config.bootstrap_unlabeled_share"),
        ("POSTCLF_POOL_LINGER_MS", "-1", "config.pool_linger_ms"),
        ("POSTCLF_POOL_LINGER_MS", "5000", "config.pool_linger_ms"),
        ("POSTCLF_QUIET_TICKS", "-1", "batcher.quiet_ticks"),
        ("POSTCLF_QUIET_TICKS", "1000000", "batcher.quiet_ticks"),
        ("POSTCLF_EVENT_LOOP", "trio", "config.event_loop"),
        ("POSTCLF_OFFLOAD_POSTS", "-1", "batcher.offload_posts"),
    ],
)
def test_out_of_range_settings_name_their_key(var: str, value: str, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_config(None, {var: value})
    assert err.value.field == field


def test_the_event_loop_defaults_to_uvloop_and_can_be_the_standard_one() -> None:
    assert load_config(None, {}).event_loop == "uvloop"
    assert load_config(None, {"POSTCLF_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
