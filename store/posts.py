"""Recording posts in both stores in the one safe order: pool embeddings durable, then ledger.

The ledger is the record of which posts exist (labels need a ledger post), so a post enters it
only after its embedding is on disk: after a crash the two can differ only by pool rows the
ledger never acknowledged, which the next write of that post simply repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.data import Views
from store.ledger import Ledger
from store.pool import Pool


@dataclass(frozen=True)
class PostBatch:
    """Posts to record: ids `(n,)` (distinct), their views, and optional per-post metadata."""

    post_ids: Sequence[str]
    views: Views
    source: str  # classify | ingest | seed
    predicted: Sequence[str | None] | None = None  # (n,) class names of the serving model
    model_version: str | None = None
    holdout: Sequence[bool] | None = None  # None: drawn from the id's hash


def record_posts(pool: Pool, ledger: Ledger, batch: PostBatch) -> np.ndarray:
    """Pool the posts the ledger has not seen, then ledger them; returns which were new `(n,)`.

    A post already known keeps its pooled embedding (first wins); only its latest prediction
    is updated."""
    ids = [str(p) for p in batch.post_ids]
    fresh = ~ledger.known_posts(ids)  # (n,) bool
    new = np.flatnonzero(fresh)
    if new.size == len(ids):  # the common case (fresh posts): no copy of the views
        pool.append(ids, batch.views)
    elif new.size:
        pool.append([ids[i] for i in new.tolist()], batch.views.take(new))
    ledger.add_posts(
        ids,
        batch.source,
        predicted_labels=batch.predicted,
        model_version=batch.model_version,
        holdout=batch.holdout,
        known=(~fresh).tolist(),  # fresh rows get their prediction from the INSERT
    )
    return fresh
