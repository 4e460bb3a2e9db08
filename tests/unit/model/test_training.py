"""Passive and active phases: learning happens, BN is frozen in the active phase."""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from model.data import Views
from model.evaluation import evaluate_model
from model.training import (
    LabeledViews,
    _fit_temperature,
    _validate,
    finetune_active,
    train_passive,
)
from tests.conftest import TINY_TRAIN


def _bn_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k
    }


def test_passive_training_beats_chance(tiny_model, small_splits) -> None:
    chance = 1 / len(tiny_model.classes)
    assert evaluate_model(tiny_model, small_splits["test"]).accuracy > 3 * chance


def test_active_phase_keeps_bn_running_statistics(tiny_model, small_splits, class_names) -> None:
    parent = copy.deepcopy(tiny_model)
    before = _bn_buffers(parent.net)
    weights_before = parent.net.image_mid[0].weight.clone()
    child = finetune_active(parent, small_splits["train"], small_splits["val"], TINY_TRAIN)
    after = _bn_buffers(child.net)
    assert before.keys() == after.keys() and before
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(weights_before, child.net.image_mid[0].weight)  # it did train
    assert child.meta["train"]["phase"] == "active"
    # The parent is untouched: fine-tuning works on a copy.
    assert torch.equal(weights_before, parent.net.image_mid[0].weight)


def test_active_phase_uses_adaptive_batch(tiny_model, small_splits) -> None:
    train = small_splits["train"]
    sub = train.take(np.arange(300))
    child = finetune_active(tiny_model, sub, small_splits["val"], TINY_TRAIN)
    assert child.meta["train"]["batch_size"] == 75  # 64 + floor(44 / floor(300 / 64) = 4)


def test_same_seed_same_model(small_splits, class_names) -> None:
    train = LabeledViews(small_splits["train"].views, small_splits["train"].labels)
    a = train_passive(train, small_splits["val"], class_names, TINY_TRAIN)
    b = train_passive(train, small_splits["val"], class_names, TINY_TRAIN)
    va = a.predict(small_splits["test"].views).probs
    vb = b.predict(small_splits["test"].views).probs
    assert np.allclose(va, vb)


def test_temperature_fit_recovers_a_known_overconfidence() -> None:
    """Labels drawn from softmax(z), logits 3·z: the NLL-optimal temperature is 3."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 5, generator=gen)
    target = torch.multinomial(torch.softmax(z, 1), 1, generator=gen).squeeze(1)
    assert abs(_fit_temperature(3 * z, target) - 3.0) < 0.1
    assert abs(_fit_temperature(z, target) - 1.0) < 0.05


def test_calibration_fits_a_temperature_per_head_that_lowers_val_nll(
    tiny_model, small_splits
) -> None:
    assert set(tiny_model.temperature) == {"image", "text", "fused"}
    assert all(0.05 <= t <= 20 for t in tiny_model.temperature.values())
    for head, (logits, target) in _validate(tiny_model, small_splits["val"]).head_logits.items():
        t = tiny_model.temperature[head]
        fitted, raw = F.cross_entropy(logits / t, target), F.cross_entropy(logits, target)
        assert float(fitted) <= float(raw) + 1e-6, head  # fitted on val: never worse than T = 1


def test_row_weights_reach_the_loss_low_weight_noise_barely_moves_the_model() -> None:
    """Two separable classes, each row twice, the copy with the other label: at weight 1 the
    copy ties with the truth and the model may follow either; at 0.05 it learns the truth."""
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    x = (rng.standard_normal((400, 8)) + 3.0 * (2 * y[:, None] - 1)).astype(np.float32)
    views = Views.from_nan_rows(x, x[:, ::-1].copy())
    test = LabeledViews(views, y)
    twice = Views.concat([views, views])
    labels = np.concatenate([y, 1 - y])

    def acc(w: float) -> float:
        weights = np.concatenate([np.ones(400), np.full(400, w)]).astype(np.float32)
        train = LabeledViews(twice, labels, weights)
        return evaluate_model(train_passive(train, None, ["a", "b"], TINY_TRAIN), test).accuracy

    low, even = acc(0.05), acc(1.0)
    assert low > 0.95 and even < 0.8, (low, even)
