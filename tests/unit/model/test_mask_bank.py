"""MC-Dropout speed-ups: MaskBankDropout statistics and the fused fast path of predict_mc."""

import copy
import dataclasses

import numpy as np
import torch

from model.classifier import Classifier, MaskBankDropout


def test_masks_have_the_dropout_rate_and_scale() -> None:
    drop = MaskBankDropout(0.25, np.random.default_rng(0))
    x = torch.ones(4000, 64)
    y = drop(x.clone())
    assert np.allclose(torch.unique(y).numpy(), [0.0, 4 / 3])
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.02  # unbiased: E[mask] = 1


def test_rows_and_calls_get_different_masks_and_rng_fixes_them() -> None:
    a = MaskBankDropout(0.25, np.random.default_rng(3))
    b = MaskBankDropout(0.25, np.random.default_rng(3))
    x = torch.ones(20, 256)
    first, second = a(x.clone()), a(x.clone())
    assert not torch.equal(first[0], first[1])  # rows of one call differ
    assert not torch.equal(first, second)  # calls differ (random offsets)
    assert torch.equal(first, b(x.clone())) and torch.equal(second, b(x.clone()))


def test_grows_its_bank_and_zero_rate_is_identity() -> None:
    drop = MaskBankDropout(0.25, np.random.default_rng(1), min_bank=16)
    small, big = drop(torch.ones(2, 4)), drop(torch.ones(100, 100))
    assert small.shape == (2, 4) and big.shape == (100, 100)
    assert drop.bank.numel() >= 2 * 100 * 100
    x = torch.randn(5, 3)
    assert torch.equal(MaskBankDropout(0.0, np.random.default_rng(0))(x.clone()), x)


def _without_dropout(clf: Classifier) -> Classifier:
    net = copy.deepcopy(clf.net)
    net.cfg = dataclasses.replace(net.cfg, dropout=0.0)
    return dataclasses.replace(clf, net=net)


def test_mc_without_dropout_equals_predict_row_for_row(tiny_model, small_splits) -> None:
    """Fused rows are regrouped into their own chunks; every row must land back in place."""
    v = small_splits["test"].views
    assert (~v.image_mask).any()  # the fixture mixes fused and text-only rows
    clf = _without_dropout(tiny_model)
    mc = clf.predict_mc(v, 3, np.random.default_rng(0), batch_size=16)
    det = clf.predict(v).probs
    assert np.allclose(mc, det[:, None, :], atol=1e-5)


def test_fused_fast_path_matches_the_generic_path(tiny_model, small_splits) -> None:
    v = small_splits["test"].views
    v = v.take(np.flatnonzero(v.image_mask & v.text_mask)[:30])
    fast = tiny_model.predict_mc(v, 5, np.random.default_rng(4), batch_size=64)  # (30, 5, C)
    drop = MaskBankDropout(tiny_model.net_config.dropout, np.random.default_rng(4))
    head = np.tile(np.array(["fused"] * 30), 5)
    with torch.inference_mode():
        generic = tiny_model._mc_generic(v, head, 5, drop)  # (5·30, C)
    generic = generic.reshape(5, 30, -1).transpose(1, 0, 2)
    assert np.allclose(fast, generic, atol=1e-5)


def test_repeated_equals_dropout_of_a_repeat() -> None:
    x = torch.randn(7, 12)
    a = MaskBankDropout(0.25, np.random.default_rng(2)).repeated(x, 5)  # (35, 12)
    b = MaskBankDropout(0.25, np.random.default_rng(2))(x.repeat(5, 1))
    assert a.shape == (35, 12) and torch.equal(a, b)
