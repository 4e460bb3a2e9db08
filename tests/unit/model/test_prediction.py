"""Deterministic prediction, MC-Dropout, checkpoints and the registry."""

import copy
import dataclasses
import threading

import numpy as np
import pytest
import torch

from model.classifier import Classifier
from model.data import Views
from model.registry import ModelRegistry
from postclf_errors import InvalidInputError, ModelUnavailableError


def test_head_used_follows_available_modalities(tiny_model, small_splits) -> None:
    v = small_splits["test"].views
    pred = tiny_model.predict(v)
    assert pred.probs.shape == (len(v), len(tiny_model.classes))
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-5)
    both = v.image_mask & v.text_mask
    assert (pred.head[both] == "fused").all()
    assert (pred.head[~v.image_mask] == "text").all()


def test_one_forward_pass_gives_every_heads_probabilities(tiny_model, small_splits) -> None:
    """`with_heads`: `(n, 3, C)` in HEADS order; the served head's row equals `probs`, a head
    with its view missing is all zeros (a one-view post has one head)."""
    v = small_splits["test"].views
    pred = tiny_model.predict(v, with_heads=True)
    hp = pred.head_probs
    assert hp.shape == (len(v), 3, len(tiny_model.classes))
    present = hp.sum(axis=2)  # (n, 3)
    assert np.allclose(present[v.image_mask, 0], 1, atol=1e-5)
    assert np.allclose(present[~v.image_mask, 0], 0) and np.allclose(present[~v.image_mask, 2], 0)
    assert np.allclose(present[v.text_mask, 1], 1, atol=1e-5)
    served = {"image": 0, "text": 1, "fused": 2}
    idx = np.array([served[h] for h in pred.head])
    assert np.allclose(hp[np.arange(len(v)), idx], pred.probs, atol=1e-6)
    assert tiny_model.predict(v).head_probs is None


def test_post_with_no_embedding_is_rejected(tiny_model) -> None:
    nan = np.full((2, 384), np.nan, np.float32)
    ok = np.zeros((2, 384), np.float32)
    with pytest.raises(InvalidInputError, match=r"posts\[1\]"):
        tiny_model.predict(Views.from_nan_rows(np.stack([ok[0], nan[0]]), nan))


def test_wrong_dimension_is_rejected(tiny_model) -> None:
    with pytest.raises(InvalidInputError, match="image"):
        tiny_model.predict(Views.from_nan_rows(np.zeros((1, 10), np.float32), None))


def test_mc_samples_differ_and_bn_stays_in_eval(tiny_model, small_splits) -> None:
    v = small_splits["test"].views.take(np.arange(40))
    bn_before = {k: t.clone() for k, t in tiny_model.net.state_dict().items() if "running" in k}
    mc = tiny_model.predict_mc(v, 8, np.random.default_rng(0))
    assert mc.shape == (40, 8, len(tiny_model.classes))
    assert np.allclose(mc.sum(2), 1, atol=1e-5)
    assert not np.allclose(mc[:, 0], mc[:, 1])  # dropout is on
    for m in tiny_model.net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            assert not m.training
    for k, t in tiny_model.net.state_dict().items():
        if "running" in k:
            assert torch.equal(bn_before[k], t)


def test_mc_is_reproducible_and_centred_on_deterministic(tiny_model, small_splits) -> None:
    v = small_splits["test"].views.take(np.arange(40))
    a = tiny_model.predict_mc(v, 64, np.random.default_rng(1))
    b = tiny_model.predict_mc(v, 64, np.random.default_rng(1))
    assert np.array_equal(a, b)
    det = tiny_model.predict(v).probs
    # Inverted dropout keeps activations unbiased: the MC mean mostly agrees with the
    # deterministic class (not always: softmax of an average is not an average of softmaxes).
    agree = (a.mean(1).argmax(1) == det.argmax(1)).mean()
    assert agree > 0.6


def test_mc_without_dropout_equals_deterministic_prediction(tiny_model, small_splits) -> None:
    """The cached prefix + T-fold batch path computes exactly the deterministic network."""
    clf = copy.deepcopy(tiny_model)
    clf.net.cfg = dataclasses.replace(clf.net.cfg, dropout=0.0)
    v = small_splits["test"].views
    mc = clf.predict_mc(v, 3, np.random.default_rng(0))
    det = clf.predict(v).probs
    for t in range(3):
        assert np.allclose(mc[:, t], det, atol=1e-5)


def test_checkpoint_round_trip_predicts_identically(tiny_model, small_splits, tmp_path) -> None:
    path = tmp_path / "m.pt"
    tiny_model.save(path)
    loaded = Classifier.load(path)
    v = small_splits["test"].views
    assert np.array_equal(tiny_model.predict(v).probs, loaded.predict(v).probs)
    assert loaded.classes == tiny_model.classes and loaded.temperature == tiny_model.temperature


def test_registry_promotes_atomically(tiny_model, tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ModelUnavailableError):
        reg.load()
    v1 = reg.save(tiny_model, metrics={"accuracy": 0.5})
    assert reg.current_version() is None  # saving is not promoting
    reg.promote(v1)
    v2 = reg.save(tiny_model, parent=v1)
    assert (v1, v2) == ("v0001", "v0002") and reg.current_version() == v1
    reg.promote(v2)
    assert reg.load().meta["version"] == v2
    assert reg.info(v2).meta["parent"] == v1
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_concurrent_saves_get_distinct_versions(tiny_model, tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    names: list[str] = []
    threads = [
        threading.Thread(target=lambda: names.append(reg.save(tiny_model))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4


def test_checkpoint_with_numpy_class_names_loads(tiny_model, tmp_path) -> None:
    """Class names straight from an .npz are numpy strings; the checkpoint must still load."""
    clf = copy.deepcopy(tiny_model)
    clf.classes = list(np.array(clf.classes))
    clf.save(tmp_path / "m.pt")
    assert Classifier.load(tmp_path / "m.pt").classes == tiny_model.classes
