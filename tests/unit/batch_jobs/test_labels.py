"""submit_labels: every rejection rule, and bad items never cost good ones their place."""

from __future__ import annotations

import pytest

from batch_jobs.labels import LabelRow, submit_labels
from store.ledger import Ledger

CLASSES = ["Dresses", "Knits"]


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        led.add_posts(["p1", "p2"], "classify")
        yield led


def test_all_valid(ledger):
    got = submit_labels(ledger, CLASSES, [LabelRow("p1", "ann", "Dresses", "q1")])
    assert (got.accepted, got.duplicates, got.rejected) == (1, 0, [])
    assert ledger.labels()[0][:3] == ("p1", "ann", "Dresses")


def test_each_rule_and_good_items_kept(ledger):
    items = [
        LabelRow("p1", "ann", "Dresses"),
        LabelRow("nope", "ann", "Dresses"),
        LabelRow("p2", "ann", "Jackets"),
        LabelRow("p2", "  ", "Knits"),
        LabelRow("", "ann", "Knits"),
        LabelRow("p2", "bob", "Knits"),
    ]
    got = submit_labels(ledger, CLASSES, items)
    assert got.accepted == 2
    by_index = {r.index: r for r in got.rejected}
    assert sorted(by_index) == [1, 2, 3, 4]
    assert (by_index[1].field, by_index[1].reason) == ("labels[1].post_id", "unknown post_id")
    assert by_index[2].field == "labels[2].label" and "Jackets" in by_index[2].reason
    assert by_index[3].field == "labels[3].assessor_id"
    assert by_index[4].field == "labels[4].post_id"
    assert sorted(r[:3] for r in ledger.labels()) == [
        ("p1", "ann", "Dresses"),
        ("p2", "bob", "Knits"),
    ]


def test_duplicates_and_corrections(ledger):
    submit_labels(ledger, CLASSES, [LabelRow("p1", "ann", "Dresses")])
    dup = submit_labels(ledger, CLASSES, [LabelRow("p1", "ann", "Dresses")])
    fix = submit_labels(ledger, CLASSES, [LabelRow("p1", "ann", "Knits")])
    assert (dup.accepted, dup.duplicates) == (0, 1)
    assert (fix.accepted, fix.corrections) == (1, 1)
    assert [r[2] for r in ledger.labels()] == ["Knits"]


def test_only_bad_items_write_nothing(ledger):
    got = submit_labels(ledger, CLASSES, [LabelRow("nope", "ann", "Dresses")])
    assert (got.accepted, len(got.rejected)) == (0, 1)
    assert ledger.labels() == []


def test_assessor_ids_are_bounded_and_printable(ledger):
    got = submit_labels(
        ledger,
        CLASSES,
        [
            LabelRow("p1", "a" * 129, "Dresses"),
            LabelRow("p1", "ann\nroot", "Dresses"),
            LabelRow("p1", "ann", "Dresses"),
        ],
    )
    assert [(r.index, r.field, r.reason) for r in got.rejected] == [
        (0, "labels[0].assessor_id", "assessor_id longer than 128 bytes"),
        (1, "labels[1].assessor_id", "control characters"),
    ]
    assert got.accepted == 1  # the good label of the same call is stored
