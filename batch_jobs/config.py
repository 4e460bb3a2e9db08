"""Typed job configuration: where state lives (`Paths`) and how the jobs behave (`JobConfig`)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from acquisition.stochastic import check_sampling
from batch_jobs.self_training import SelfTrainConfig
from model.training import TrainConfig
from postclf_errors import InvalidInputError

ENGINES = ("local", "ray")
PREFILTERS = ("auto", "bf16", "off")
AGGREGATIONS = ("auto", "ds", "mv")


@dataclass(frozen=True)
class QueryConfig:
    """How a query is chosen."""

    strategy: str = "margin"  # a name in acquisition.scores.STRATEGIES
    query_size: int = 20
    candidate_factor: int = 10  # diversity/balance pick from the top factor·q by score
    # Defaults chosen on the simulator (README, "Nightly default"): margin + k-means diversity
    # + class balance beat plain margin on reviews' val split and on mnist_seed.
    diversity: str | None = "kmeans"  # "kmeans" | "kcenter" | None ("none" in a file: off)
    balance: bool = True  # cap each predicted class at its share of the query
    mc_samples: int = 20  # T for MC-Dropout strategies (bald)
    sampling: str = "top"  # top | power | softmax (acquisition.stochastic)
    temperature: float = 1.0  # sampling temperature T (weights score^(1/T) or exp(score/T))
    # Below this many labeled non-gate posts: typicality cold start (0 = never). 1,000 with
    # self-training on: the simulator's best policy on reviews' val split (README, "Nightly
    # default"); mnist_seed could judge only this part (within its noise, behind at 400 labels).
    cold_start_labels: int = 1000
    cold_start_sample: int = 20_000  # uniform sample of eligible posts the cold start clusters
    # Share of each query drawn uniformly at random (at least one row): an unbiased control
    # (the retrain report's random_control); it costs labels (README, "Nightly default").
    random_share: float = 0.05

    def __post_init__(self) -> None:
        if self.diversity == "none":  # TOML and the environment cannot say None
            object.__setattr__(self, "diversity", None)
        if self.diversity not in (None, "kmeans", "kcenter"):
            raise InvalidInputError(
                f"must be kmeans, kcenter or none, got {self.diversity!r}", "diversity"
            )
        check_sampling(self.sampling, self.temperature)
        if self.query_size < 1:
            raise InvalidInputError(f"must be >= 1, got {self.query_size}", "query_size")
        if self.cold_start_labels < 0:
            raise InvalidInputError("must be >= 0", "cold_start_labels")
        if self.cold_start_sample < self.query_size:
            raise InvalidInputError("must be >= query_size", "cold_start_sample")
        if not 0.0 <= self.random_share <= 1.0:
            raise InvalidInputError(f"must be in [0, 1], got {self.random_share}", "random_share")

    def cold(self, labeled: int) -> bool:
        """Whether `labeled` labeled non-gate posts are few enough for the cold start."""
        return labeled < self.cold_start_labels


@dataclass(frozen=True)
class EngineConfig:
    """Where and in what pieces the pool is scored (the query does not depend on it)."""

    engine: str = "local"  # local: this process (or `workers` processes); ray: Ray Data
    workers: int = 1  # scoring processes (local) or actors (ray)
    torch_threads: int = 1  # intra-op threads per worker, set explicitly in each
    chunk_rows: int = 16_384  # posts scored per chunk: memory ∝ this, never the pool
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray
    # A bfloat16 pass over every row, then float32 on the rows that can still be picked
    # (batch_jobs.scoring): auto = where the CPU runs bf16 fast (AMX / AVX512-BF16); off = float32.
    prefilter: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidInputError(f"must be one of {ENGINES}", "engine")
        if self.prefilter not in PREFILTERS:
            raise InvalidInputError(
                f"must be one of {PREFILTERS}, got {self.prefilter!r}", "prefilter"
            )
        if self.workers < 1 or self.chunk_rows < 1 or self.torch_threads < 1:
            raise InvalidInputError("workers, chunk_rows, torch_threads must be >= 1", "engine")


@dataclass(frozen=True)
class CrowdConfig:
    """Assessors as people: overlap, control items, aggregation and a quality floor."""

    overlap: int = 1  # assessors asked per item (manifest; Label Studio's maximum annotations)
    control_share: float = 0.0  # share of each query that is control items (labeled holdout)
    relabel_share: float = 0.1  # at most this share of each query re-asks unsure items
    aggregate: str = "auto"  # auto: Dawid-Skene on items with ≥ 2 labels, else MV; ds; mv
    min_confidence: float = 0.7  # an aggregated label less sure than this is re-asked
    quality_floor: float = 0.5  # assessors estimated below this accuracy are excluded
    # Evidence before an assessor is judged: control answers for the control accuracy (which
    # wins), else labels on items others labeled too for the Dawid-Skene estimate.
    min_evidence: int = 5
    ds_iterations: int = 100  # Dawid-Skene EM iterations

    def __post_init__(self) -> None:
        if not 1 <= self.overlap <= 20:
            raise InvalidInputError("must be in [1, 20]", "crowd.overlap")
        for name in ("control_share", "relabel_share"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InvalidInputError("must be in [0, 1)", f"crowd.{name}")
        if self.control_share + self.relabel_share >= 1.0:
            raise InvalidInputError("control_share + relabel_share must be < 1", "crowd")
        if self.aggregate not in AGGREGATIONS:
            raise InvalidInputError(f"must be one of {AGGREGATIONS}", "crowd.aggregate")
        for name in ("min_confidence", "quality_floor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInputError("must be in [0, 1]", f"crowd.{name}")
        if self.min_evidence < 1:
            raise InvalidInputError("must be >= 1", "crowd.min_evidence")
        if self.ds_iterations < 1:
            raise InvalidInputError("must be >= 1", "crowd.ds_iterations")


@dataclass(frozen=True)
class Paths:
    """Everything the service keeps lives under one `home` folder (POSTCLF_HOME)."""

    home: Path

    @property
    def ledger(self) -> Path:
        """SQLite ledger file: posts, labels, queries, model records, job runs, locks."""
        return Path(self.home) / "ledger.db"

    @property
    def pool(self) -> Path:
        """Folder of `.npy` embedding segments (store.pool.Pool)."""
        return Path(self.home) / "pool"

    @property
    def models(self) -> Path:
        """Model registry root (model.registry.ModelRegistry)."""
        return Path(self.home) / "models"

    @property
    def exports(self) -> Path:
        """One folder per exported query: exports/<query_id>/."""
        return Path(self.home) / "exports"


@dataclass(frozen=True)
class JobConfig:
    """How the nightly job, retraining and bootstrap behave."""

    query: QueryConfig = field(default_factory=QueryConfig)  # strategy and query size
    train: TrainConfig = field(default_factory=TrainConfig)  # both training phases
    min_new_labels: int = 20  # labels written since the current model before retraining
    promote_tolerance: float = 0.005  # promote if cand. gate accuracy >= current's - this
    holdout_fraction: float = 0.15  # share of new posts (by sha1 of id) kept for the gate
    query_ttl_days: int = 7  # open queries older than this are closed by the nightly job
    seed: int = 0  # query randomness: the generator is seeded with (seed, night)
    engine: EngineConfig = field(default_factory=EngineConfig)  # how the pool is scored
    # Job leases (store.lease): renewed every lock_heartbeat_s while the job runs; a killed
    # holder's lease expires lock_ttl_s after its last heartbeat (at once on the same host).
    lock_ttl_s: float = 60.0
    lock_heartbeat_s: float = 15.0
    ledger_synchronous: str = "FULL"  # FULL: a committed label survives a power loss
    pool_dtype: str = "float32"  # embedding storage: float32, or float16 (half the disk)
    pool_days: int = 14  # retention: day partitions older than this are deleted nightly
    score_days: int = 0  # scoring window: 0 = posts since the last successful night
    misfire_grace_s: int = 3600  # scheduler: a run missed by less than this still happens
    crowd: CrowdConfig = field(default_factory=CrowdConfig)  # overlap, controls, aggregation
    # Self-training in the retrain's fine-tune (on by default, one threshold chosen on the
    # gate set; batch_jobs.self_training, README "Nightly default").
    self_training: SelfTrainConfig = field(default_factory=SelfTrainConfig)

    def __post_init__(self) -> None:
        if self.min_new_labels < 0:
            raise InvalidInputError("must be >= 0", "min_new_labels")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise InvalidInputError("must be in [0, 1)", "holdout_fraction")
        if self.query_ttl_days < 1:
            raise InvalidInputError("must be >= 1", "query_ttl_days")
        if not 0 < self.lock_heartbeat_s < self.lock_ttl_s:
            raise InvalidInputError("need 0 < lock_heartbeat_s < lock_ttl_s", "lock_heartbeat_s")
        if self.pool_days < 1:
            raise InvalidInputError("must be >= 1", "pool_days")
        if self.score_days < 0:
            raise InvalidInputError("must be >= 0", "score_days")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        """Build from plain data (a config file section); `query`/`train` are nested dicts."""
        kwargs = dict(data)
        if isinstance(kwargs.get("self_training"), dict):
            st = dict(kwargs["self_training"])
            if "thresholds" in st:  # a TOML array arrives as a list
                st["thresholds"] = tuple(st["thresholds"])
            kwargs["self_training"] = st
        nested = (
            ("query", QueryConfig),
            ("train", TrainConfig),
            ("engine", EngineConfig),
            ("crowd", CrowdConfig),
            ("self_training", SelfTrainConfig),
        )
        for key, kind in nested:
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = build_config(kind, kwargs[key], f"jobs.{key}")
        built: JobConfig = build_config(cls, kwargs, "jobs")
        return built


def load_job_file(path: Path) -> tuple[Path | None, JobConfig]:
    """`(home, JobConfig)` from a server config file: its top-level `home` and `[jobs]` table
    (the same table and builder the server uses, so both read one configuration)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    home = data.get("home")
    return (Path(home) if home else None), JobConfig.from_dict(data.get("jobs") or {})


def build_config(
    kind: type,
    data: Mapping[str, Any],
    where: str,
    coerce: Callable[[Any, str, str], Any] | None = None,
) -> Any:
    """The one config builder: `kind(**data)`, refusing unknown keys (naming them and `where`);
    with `coerce(value, annotation, field)`, values are converted first (environment strings)."""
    types = {f.name: str(f.type) for f in fields(kind)}
    unknown = set(data) - set(types)
    if unknown:
        raise InvalidInputError(f"unknown keys {sorted(unknown)}", where)
    if coerce is not None:
        data = {k: coerce(v, types[k], f"{where}.{k}") for k, v in data.items()}
    return kind(**data)
