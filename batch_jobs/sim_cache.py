"""Cache of the simulator's full-data reference, per data set content and protocol.

The reference (passive training on every pool label) is the slowest part of a short run and
depends only on the data, the split seed and the training protocol, so reruns with other
strategies or step counts reuse it. The key hashes the data set's labels, split and a sample
of its embeddings with every config field the reference reads; a changed file or protocol is
a new key, never a stale hit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs.datasets import Dataset

PROTOCOL_FIELDS = ("pool_limit", "stop_on", "eval_on", "rare_fraction")
VERSION = 1  # bump when full_reference itself changes


def fingerprint(ds: Dataset) -> str:
    """Content hash of a data set: labels, split, class names, and sampled embedding rows."""
    h = hashlib.blake2b(digest_size=16)
    h.update(ds.name.encode())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    if ds.split is not None:
        h.update("\0".join(ds.split.astype(str).tolist()).encode())
    h.update("\0".join(ds.class_names).encode())
    for x in (ds.views.image, ds.views.text):
        if x is not None:
            h.update(np.ascontiguousarray(x[:: max(1, len(x) // 512)]).tobytes())
    return h.hexdigest()


def key(ds: Dataset, cfg: Any, seed: int) -> str:
    """Cache key of one seed's reference under `cfg` (a SimConfig)."""
    protocol = {f: getattr(cfg, f) for f in PROTOCOL_FIELDS} | {"train": asdict(cfg.train)}
    text = json.dumps([VERSION, fingerprint(ds), seed, protocol], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def load(folder: Path | None, k: str) -> dict | None:
    """The cached reference for key `k`, or None."""
    if folder is None or not (folder / f"{k}.json").exists():
        return None
    return json.loads((folder / f"{k}.json").read_text())


def store(folder: Path | None, k: str, value: dict) -> None:
    """Write atomically (temporary file, rename)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{k}.tmp"
    tmp.write_text(json.dumps(value))
    tmp.replace(folder / f"{k}.json")
