"""Simulated assessors: the confusion favours similar classes; accuracy is what was asked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batch_jobs.assessors import CrowdOracle, SimulatedTeam, similar_class_confusion


def test_confusion_is_row_stochastic_and_prefers_the_nearest_class():
    cent = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # class 1 is close to 0, 2 is far
    conf = similar_class_confusion(cent)
    assert np.allclose(conf.sum(1), 1) and np.allclose(np.diag(conf), 0)
    assert conf[0, 1] > 0.99 and conf[2, 1] > conf[2, 0]


def test_answers_have_the_asked_accuracy_and_distinct_assessors():
    conf = similar_class_confusion(np.eye(4))
    team = SimulatedTeam((1.0, 0.7, 0.0), conf)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 20_000)
    for a, acc in enumerate(team.accuracies):
        got = team.answer(truth, np.full(len(truth), a), rng)
        assert abs((got == truth).mean() - acc) < 0.02
    who = team.assign(100, 3, rng)
    assert all(len(set(row)) == 3 for row in who.tolist())


def test_oracle_aggregates_every_answer_so_far():
    conf = similar_class_confusion(np.eye(3))
    truth = np.random.default_rng(1).integers(0, 3, 300)
    oracle = CrowdOracle(
        SimulatedTeam((0.9, 0.8, 0.7), conf), truth, 3, "ds", np.random.default_rng(2)
    )
    oracle.ask(np.arange(200))
    copy = oracle.copy()
    oracle.ask(np.arange(200, 300))
    rows, _labels = oracle.labels()
    assert rows.tolist() == list(range(300)) and len(copy.labels()[0]) == 200
    assert oracle.label_accuracy() > 0.9  # three fair assessors agree more than each alone


def test_simulate_with_assessors_records_label_accuracy(data_dir, tmp_path):
    from batch_jobs import simulate

    simulate.main(
        [
            "--dataset", "reviews_small", "--data-dir", str(data_dir), "--out", str(tmp_path),
            "--strategies", "margin", "--initial", "60", "--query-size", "10", "--steps", "1",
            "--seeds", "1", "--quiet", "--d", "16", "--epochs", "2", "--finetune-epochs", "2",
            "--no-calibrate", "--assessors", "0.9,0.75,0.6", "--overlap", "3", "--aggregate", "mv",
        ]
    )  # fmt: skip
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["config"]["assessors"] == [0.9, 0.75, 0.6] and raw["config"]["overlap"] == 3
    (curve,) = raw["curves"]["margin"]
    assert len(curve["label_accuracy"]) == len(curve["labels"]) == 2
    assert all(0.5 < a < 1.0 for a in curve["label_accuracy"])  # noisy, not random


@pytest.mark.parametrize("bad", ["0.9,x", "1.5", ""])
def test_simulate_rejects_bad_accuracies(bad):
    from batch_jobs import simulate

    with pytest.raises(SystemExit):
        simulate.parse_args(["--out", "x", "--assessors", bad])
