"""Aggregation: known answers for DS vs MV, properties of both, the ledger adapter's floor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_jobs.aggregation import Votes, aggregate_rows, aggregate_votes, majority_vote
from batch_jobs.config import CrowdConfig
from postclf_errors import InvalidInputError


def _votes(triples):
    a = np.asarray(triples, np.int64)
    return Votes(a[:, 0], a[:, 1], a[:, 2])


def test_majority_vote_known_answer_and_ties():
    items, shares, tie = majority_vote(
        _votes([(0, 0, 1), (0, 1, 1), (0, 2, 0), (1, 0, 0), (1, 1, 1)]), 2
    )
    assert items.tolist() == [0, 1]
    assert np.allclose(shares, [[1 / 3, 2 / 3], [0.5, 0.5]])
    assert tie.tolist() == [False, True]


def test_dawid_skene_resolves_what_majority_vote_cannot():
    """Workers 0-2 are always right; workers 3-5 answer only the later 40 items, always the same
    wrong class. There MV sees 3 vs 3 (a tie on every item); DS has learned from the first 20
    items who agrees with whom and follows workers 0-2 everywhere."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    rows = []
    for item, t in enumerate(truth):
        for w in (0, 1, 2):
            rows.append((item, w, t))
        if item >= 20:  # the liars only answer the later items, always wrong, in unison
            rows.append((item, 3, (t + 1) % 3))
            rows.append((item, 4, (t + 1) % 3))
            rows.append((item, 5, (t + 1) % 3))
    votes = _votes(rows)
    ds = aggregate_votes(votes, 3, "ds")
    mv = aggregate_votes(votes, 3, "mv")
    assert mv.tie[20:].all() and not mv.tie[:20].any()
    assert (ds.labels == truth).all()
    assert ds.worker_accuracy[0] > 0.9 and ds.worker_accuracy[3] < 0.1
    assert ds.worker_confusion[3].shape == (3, 3)


def test_auto_uses_ds_only_where_an_item_has_several_votes():
    votes = _votes([(0, 0, 1), (0, 1, 1), (1, 0, 2), (2, 1, 0), (2, 0, 0)])
    agg = aggregate_votes(votes, 3, "auto")
    assert agg.method.tolist() == ["ds", "mv", "ds"]
    single = aggregate_votes(_votes([(0, 0, 1), (1, 0, 2)]), 3, "auto")
    assert single.method.tolist() == ["mv", "mv"] and single.worker_accuracy == {}
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_votes(votes, 3, "median")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40
    ),
    st.sampled_from(["auto", "ds", "mv"]),
)
def test_every_voted_item_gets_one_label_with_a_probability(triples, method):
    # one vote per (item, worker), as the ledger keeps it
    triples = list({(i, w): (i, w, c) for i, w, c in triples}.values())
    votes = _votes(triples)
    agg = aggregate_votes(votes, 4, method)
    assert agg.items.tolist() == sorted({i for i, _w, _c in triples})
    assert ((agg.labels >= 0) & (agg.labels < 4)).all()
    assert ((agg.confidence > 0) & (agg.confidence <= 1 + 1e-9)).all()
    for k, item in enumerate(agg.items):
        answers = [c for i, _w, c in triples if i == item]
        if method == "mv" and len(set(answers)) == 1:  # unanimous items keep their label
            assert agg.labels[k] == answers[0]
        if method == "auto" and len(answers) == 1:  # a lone answer is taken as it is (MV)
            assert agg.labels[k] == answers[0] and agg.method[k] == "mv"


def _rows(spec):
    return [(p, a, lab, False) for p, a, lab in spec]


def test_controls_exclude_a_bad_assessor_with_the_reason():
    classes = ["A", "B"]
    rows = _rows([(f"p{i}", w, "A" if i % 2 else "B") for i in range(10) for w in ("ann", "bob")])
    rows += _rows([(f"p{i}", "eve", "B" if i % 2 else "A") for i in range(10)])
    controls = [(f"c{i}", "eve", "B", "A") for i in range(5)]
    controls += [(f"c{i}", "ann", "A", "A") for i in range(5)]
    got = aggregate_rows(rows, classes, CrowdConfig(min_evidence=5), controls)
    by = {a.assessor_id: a for a in got.assessors}
    assert by["eve"].excluded and "control accuracy 0.000 on 5 control items" in by["eve"].reason
    assert by["eve"].control_accuracy == 0.0 and by["ann"].control_accuracy == 1.0
    assert not by["ann"].excluded and not by["bob"].excluded
    assert got.summary()["excluded_assessors"] == {"eve": by["eve"].reason}
    assert got.summary()["methods"] == {"ds": 10}
    assert [classes[c] for c in got.labels] == ["B" if i % 2 == 0 else "A" for i in range(10)]
    assert "c0" not in got.post_ids.tolist()  # control answers are scored, never voted


def test_an_assessor_is_not_judged_before_enough_evidence():
    rows = _rows([("p1", "ann", "A"), ("p1", "eve", "B")])
    got = aggregate_rows(rows, ["A", "B"], CrowdConfig(min_evidence=5))
    assert not any(a.excluded for a in got.assessors)


def test_mv_mode_keeps_the_old_tie_rule_and_low_confidence_is_listed():
    rows = _rows(
        [("a", "x", "A"), ("a", "y", "B"), ("b", "x", "A"), ("b", "y", "A"), ("b", "z", "B")]
    )
    got = aggregate_rows(rows, ["A", "B"], CrowdConfig(aggregate="mv", min_confidence=0.7))
    assert got.ties == ["a"] and got.post_ids.tolist() == ["b"]
    assert got.low_confidence == ["b"]  # 2 of 3 votes < 0.7


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"overlap": 0}, "crowd.overlap"),
        ({"control_share": 1.0}, "crowd.control_share"),
        ({"control_share": 0.6, "relabel_share": 0.5}, "crowd"),
        ({"aggregate": "glad"}, "crowd.aggregate"),
        ({"quality_floor": 1.5}, "crowd.quality_floor"),
        ({"min_evidence": 0}, "crowd.min_evidence"),
    ],
)
def test_crowd_config_names_the_bad_field(kwargs, field):
    with pytest.raises(InvalidInputError) as err:
        CrowdConfig(**kwargs)
    assert err.value.field == field
