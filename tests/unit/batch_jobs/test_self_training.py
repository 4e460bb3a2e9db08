"""Self-training: threshold on validation, per-class caps, eligible rows only, the retrain."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from batch_jobs.retrain import retrain
from batch_jobs.self_training import (
    SelfTrainConfig,
    choose_threshold,
    class_thresholds,
    joint_embedding,
    knn_votes,
    select_pseudo,
    with_pseudo_labels,
)
from model.data import Views
from model.training import LabeledViews
from postclf_errors import InvalidInputError
from store.ledger import Ledger, hash_holdout

from .test_retrain import label_test_posts

CFG = SelfTrainConfig(
    True, thresholds=(0.6, 0.8, 0.9), target_precision=0.9, min_val_rows=2, order="confident"
)


def _probs(conf: list[float], cls: list[int], c: int = 3) -> np.ndarray:
    p = np.zeros((len(conf), c))
    for i, (q, k) in enumerate(zip(conf, cls, strict=True)):
        p[i] = (1 - q) / (c - 1)
        p[i, k] = q
    return p


def test_threshold_is_the_lowest_with_enough_validation_precision() -> None:
    val = _probs([0.95, 0.92, 0.85, 0.7, 0.65], [0, 1, 2, 0, 1])
    truth = np.array([0, 1, 2, 1, 0])  # wrong below 0.8
    assert choose_threshold(val, truth, CFG) == (0.8, 1.0)
    assert choose_threshold(val, np.array([1, 0, 0, 0, 0]), CFG) == (None, None)


def test_per_class_caps_keep_the_most_confident() -> None:
    val = _probs([0.95, 0.95], [0, 1])
    pool = _probs([0.99, 0.97, 0.98, 0.96, 0.5, 0.91], [0, 0, 0, 1, 1, 2])
    got = select_pseudo(pool, val, np.array([0, 1]), n_true=6, cfg=replace(CFG, max_ratio=1.0))
    # cap = ceil(1.0 · 6 / 3) = 2 per class: class 0 keeps rows 0 and 2 (0.99, 0.98)
    assert got.rows.tolist() == [0, 2, 3, 5] and got.labels.tolist() == [0, 0, 1, 2]
    assert got.threshold == 0.6 and got.val_precision == 1.0
    rep = got.report(true=np.array([0, 1, 1, 2]))
    assert rep["pseudo_labels"] == 4 and rep["precision"] == 0.75
    none = select_pseudo(pool, val, np.array([0, 1]), n_true=0, cfg=CFG)
    assert none.rows.size == 0


def test_a_random_fill_draws_the_cap_among_rows_above_the_threshold() -> None:
    """order="random": each class's cap is a seeded uniform draw among its qualifying rows
    (not the most confident), never a row below the threshold; same inputs, same draw."""
    val = _probs([0.95, 0.95], [0, 1])
    conf = np.linspace(0.61, 0.99, 200)
    pool = _probs([*conf.tolist(), 0.5, 0.55], [0] * 200 + [0, 0])  # two below 0.6
    cfg = replace(CFG, max_ratio=1.0, order="random")
    got = select_pseudo(pool, val, np.array([0, 1]), n_true=60, cfg=cfg)  # cap 20
    assert got.rows.size == 20 and (got.labels == 0).all() and got.rows.max() < 200
    assert got.rows.tolist() != list(range(180, 200))  # not the 20 most confident
    assert conf[got.rows].min() < 0.9 < conf[got.rows].max()  # spread over the range
    again = select_pseudo(pool, val, np.array([0, 1]), n_true=60, cfg=cfg)
    assert again.rows.tolist() == got.rows.tolist()


def test_per_class_thresholds_keep_a_class_that_absorbs_others_stricter() -> None:
    """Class 1 is confidently wrong below 0.9 (it absorbs class 2's posts); class 0 is right
    from 0.6; class 2 has too few validation rows for any threshold."""
    val = _probs([0.7, 0.65, 0.95, 0.92, 0.85, 0.7, 0.99], [0, 0, 1, 1, 1, 1, 2])
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    per, precision = class_thresholds(val, truth, CFG)
    assert per.tolist() == [0.6, 0.9, np.inf] and precision == 1.0
    assert choose_threshold(val, truth, CFG) == (0.9, 1.0)  # one threshold: 0.9 for all
    pool = _probs([0.7, 0.85, 0.95, 0.99], [0, 1, 1, 2])
    got = select_pseudo(pool, val, truth, n_true=30, cfg=replace(CFG, per_class=True))
    assert got.rows.tolist() == [0, 2] and got.labels.tolist() == [0, 1]
    assert got.threshold == 0.6 and got.val_precision == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"thresholds": ()}, "self_training.thresholds"),
        ({"thresholds": (1.0,)}, "self_training.thresholds"),
        ({"target_precision": 0.0}, "self_training.target_precision"),
        ({"max_ratio": -1.0}, "self_training"),
        ({"order": "best"}, "self_training.order"),
        ({"weight": 0.0}, "self_training.weight"),
        ({"weight": 1.5}, "self_training.weight"),
        ({"agreement": "vote"}, "self_training.agreement"),
        ({"knn_k": 0}, "self_training.knn_k"),
        ({"knn_max_labeled": 0}, "self_training.knn_k"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        SelfTrainConfig(**kwargs)
    assert err.value.field == field


class _Fixed:
    """A stand-in classifier: each row's class is its first feature (confidence 0.95)."""

    def predict(self, views: Views) -> object:
        cls = views.image[:, 0].astype(int)
        return type("P", (), {"probs": _probs([0.95] * len(cls), cls.tolist())})()


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_pseudo_labels_carry_their_loss_weight_true_labels_keep_one(weight: float) -> None:
    feats = np.repeat(np.arange(3, dtype=np.float32), 4)[:, None]  # (12, 1): classes 0, 1, 2
    views = Views.from_nan_rows(feats, feats)
    labeled = LabeledViews(views.take(np.arange(3)), np.array([0, 1, 2]))
    val = LabeledViews(views, np.repeat(np.arange(3), 4))
    cfg = replace(CFG, max_ratio=3.0, weight=weight)
    grown, pseudo = with_pseudo_labels(_Fixed(), labeled, views, val, cfg)  # type: ignore[arg-type]
    assert pseudo.rows.size == 9 and len(grown) == 12
    if weight == 1.0:
        assert grown.weights is None  # no weights: the plain loss, as before
    else:
        assert grown.row_weights().tolist() == [1.0] * 3 + [pytest.approx(0.3)] * 9


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_joint_embedding_cosine_is_the_mean_of_the_views_cosines() -> None:
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(2, 3))
    img[1] *= 7.0  # scale does not matter: each view is normalised first
    views = Views.from_nan_rows(img, txt.astype(np.float32))
    j = joint_embedding(views)
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert j[0] @ j[1] == pytest.approx((cos(img[0], img[1]) + cos(txt[0], txt[1])) / 2, abs=1e-6)
    assert np.linalg.norm(j, axis=1) == pytest.approx([1.0, 1.0])


def test_knn_votes_sum_similarity_per_class_and_reads_the_views_a_query_has() -> None:
    """Labeled: two class-0 rows near axis 0, one class-1 row near axis 1 (image view). With
    k=3 a query on axis 1 votes 1 (one close row beats two far ones); a query with no image
    falls back to its text view."""
    img = _unit([[1, 0.1], [1, -0.1], [0.1, 1]])
    txt = _unit([[1, 0], [1, 0], [0, 1]])
    labeled = LabeledViews(Views.from_nan_rows(img, txt), np.array([0, 0, 1]))
    q_img = np.array([[0.0, 1.0], [1.0, 0.0], [np.nan, np.nan]], np.float32)
    q_txt = _unit([[0, 1], [1, 0], [0, 1]])
    queries = Views.from_nan_rows(q_img, q_txt)
    votes, again = knn_votes([queries, queries.take(np.array([2]))], labeled, 2, 3, 10)
    assert votes.tolist() == [1, 0, 1] and again.tolist() == [1]  # each part on its own
    (one,) = knn_votes([queries], labeled, 2, k=3, max_labeled=1)
    assert one.shape == (3,)  # a sample of 1 labeled row answers every query


def test_knn_agreement_keeps_only_rows_whose_neighbours_vote_the_models_class() -> None:
    """The stand-in model calls every row by its first feature; the labeled posts' geometry
    (second view) says rows 6..8 belong to class 0 although the model calls them 2. Those
    are dropped from the candidates, and their validation twins, confidently wrong, no
    longer push the threshold up: every agreeing row qualifies."""
    cls = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], np.float32)
    truth = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0])
    geometry = np.eye(3, dtype=np.float32)[truth]  # (9, 3) one-hot of the true class
    views = Views.from_nan_rows(cls[:, None], geometry)
    labeled = LabeledViews(views.take(np.array([0, 3])), np.array([0, 1]))
    val = LabeledViews(views, truth)
    plain = replace(CFG, max_ratio=10.0, min_val_rows=2)
    _, without = with_pseudo_labels(_Fixed(), labeled, views, val, plain)  # type: ignore[arg-type]
    assert without.threshold is None  # 6 of 9 right at 0.95: below the 0.9 target
    knn = replace(plain, agreement="knn", knn_k=1)
    _, got = with_pseudo_labels(_Fixed(), labeled, views, val, knn)  # type: ignore[arg-type]
    assert got.rows.tolist() == [0, 1, 2, 3, 4, 5] and got.val_precision == 1.0


@pytest.mark.parametrize("agreement", ["none", "knn"])
def test_retrain_adds_pseudo_labels_never_from_labeled_or_holdout(
    paths, job_cfg, small, monkeypatch, agreement: str
) -> None:
    import batch_jobs.retrain as retrain_mod

    seen: dict = {}
    real = retrain_mod.with_pseudo_labels

    def spy(clf, train, candidates, val, cfg):  # type: ignore[no-untyped-def]
        seen["n"] = len(candidates)
        return real(clf, train, candidates, val, cfg)

    monkeypatch.setattr(retrain_mod, "with_pseudo_labels", spy)
    labeled = label_test_posts(paths, small, 40)
    st = SelfTrainConfig(
        True, thresholds=(0.05, 0.1), target_precision=0.01, min_val_rows=1, agreement=agreement
    )
    report = retrain(paths, replace(job_cfg, self_training=st), force=True)
    test_ids = small["post_id"][small["split"] == "test"].astype(str)
    eligible = [p for p in test_ids if p not in set(labeled) and not hash_holdout(p, 0.15)]
    assert seen["n"] == len(eligible)  # the unlabeled, non-holdout pooled posts only
    assert report.self_training is not None and report.self_training["pseudo_labels"] > 0
    assert report.self_training["threshold"] == 0.05 and report.stability is not None
    assert 0.0 <= report.stability <= 1.0
    with Ledger(paths.ledger) as ledger:
        assert ledger.count_labels_since(0) >= 40  # nothing written as a label
