"""What a night's query holds besides the model's picks: re-asks of unsure labels and control
items with known answers, mixed in so that an assessor cannot tell them apart.

Of `query_size` slots, `round(control_share·q)` go to control items (labeled holdout posts whose
aggregated label is sure: the known answer, recorded in the ledger as `gold_label`) and at most
`round(relabel_share·q)` to posts whose aggregated label is below `min_confidence` (asked
again, least sure first); the model fills the rest. Controls take the reason of the most common
pick, and their rank is drawn at random among the others, so the export does not mark them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from batch_jobs.aggregation import Aggregated, aggregate_rows
from batch_jobs.config import CrowdConfig, QueryConfig
from model.classifier import Classifier
from store.ledger import Ledger, QueryItem
from store.pool import Pool


@dataclass(frozen=True)
class Extras:
    """The re-asked and control items of one query, and how many slots the model fills."""

    relabel: list[QueryItem]
    control: list[QueryItem]
    n_new: int

    def query(self, cfg: QueryConfig) -> QueryConfig:
        return replace(cfg, query_size=self.n_new)


def plan_extras(
    ledger: Ledger,
    pool: Pool,
    clf: Classifier,
    query: QueryConfig,
    crowd: CrowdConfig,
    rng: np.random.Generator,
) -> Extras:
    """Pick tonight's re-asks and controls (none when both shares are 0)."""
    q = query.query_size
    n_ctrl, n_re = round(crowd.control_share * q), round(crowd.relabel_share * q)
    if n_ctrl == 0 and n_re == 0:
        return Extras([], [], q)
    agg = aggregate_rows(ledger.labels(), clf.classes, crowd, ledger.control_answers())
    busy = ledger.posts_in_open_queries()
    relabel = _unsure(agg, busy, n_re)
    control = _controls(agg, busy, n_ctrl, crowd.min_confidence, rng)
    items = _predicted(pool, clf, relabel, "relabel", agg, {})
    gold = {p: clf.classes[int(c)] for p, c in zip(agg.post_ids, agg.labels, strict=True)}
    ctrl_items = _predicted(pool, clf, control, "control", agg, gold)
    return Extras(items, ctrl_items, max(1, q - len(items) - len(ctrl_items)))


def _unsure(agg: Aggregated, busy: set[str], n: int) -> list[str]:
    """Least sure first, posts not in an open query."""
    low = set(agg.low_confidence) - busy
    order = np.argsort(agg.confidence, kind="stable")
    return [str(agg.post_ids[i]) for i in order if str(agg.post_ids[i]) in low][:n]


def _controls(
    agg: Aggregated, busy: set[str], n: int, min_confidence: float, rng: np.random.Generator
) -> list[str]:
    """`n` random sure holdout posts (never trained on, so asking them costs no training row)."""
    sure = agg.holdout & (agg.confidence >= min_confidence)
    pool = [str(p) for p in agg.post_ids[sure] if str(p) not in busy]
    if not pool or n == 0:
        return []
    return [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]


def _predicted(
    pool: Pool,
    clf: Classifier,
    post_ids: list[str],
    kind: str,
    agg: Aggregated,
    gold: dict[str, str],
) -> list[QueryItem]:
    """Query items with the model's prediction (posts without a pooled embedding are left out)."""
    if not post_ids:
        return []
    found, views = pool.get(np.asarray(post_ids, dtype=str))
    if len(found) == 0:
        return []
    probs = clf.predict(views).probs  # (k, C)
    top2 = np.sort(probs, axis=1)[:, -2:]  # (k, 2)
    scores = top2[:, 0] - top2[:, 1]  # (k,) the margin score: -(p1 - p2)
    conf = dict(zip(agg.post_ids.tolist(), agg.confidence.tolist(), strict=True))
    return [
        QueryItem(
            rank=0,
            post_id=str(p),
            score=float(scores[i]),
            predicted_label=clf.classes[int(probs[i].argmax())],
            confidence=float(probs[i].max()),
            reason=f"relabel: aggregated confidence {conf[str(p)]:.2f}"
            if kind == "relabel"
            else "",
            kind=kind,
            gold_label=gold.get(str(p)),
        )
        for i, p in enumerate(found.tolist())
    ]


def merge(new: list[QueryItem], extras: Extras, rng: np.random.Generator) -> list[QueryItem]:
    """Model picks (best first), then re-asks; controls at random positions; ranks renumbered.
    A control shows the most common reason of the picks, so nothing in the export marks it."""
    reasons = Counter(it.reason for it in new)
    cover = reasons.most_common(1)[0][0] if reasons else "top-score"
    items = [*new, *extras.relabel]
    for ctrl in extras.control:
        items.insert(int(rng.integers(0, len(items) + 1)), replace(ctrl, reason=cover))
    return [replace(it, rank=r) for r, it in enumerate(items)]
