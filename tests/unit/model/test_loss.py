"""Uncertainty-weighted three-head loss with missing-modality masks."""

import torch

from model.loss import UncertaintyWeightedLoss
from model.network import HeadLogits


def _out(logits: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> HeadLogits:
    return HeadLogits(logits, masks, torch.zeros(4, 2))


def test_head_with_missing_modality_contributes_nothing() -> None:
    target = torch.tensor([0, 1, 0, 1])
    good = torch.tensor([[5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, 5.0]])
    image_mask = torch.tensor([True, True, False, False])
    loss_fn = UncertaintyWeightedLoss()
    wild = good.clone()
    wild[~image_mask] = torch.tensor([-100.0, 100.0])  # garbage where the image is missing
    base = loss_fn(
        _out({"image": good, "text": good}, {"image": image_mask, "text": image_mask | True}),
        target,
    )
    noisy = loss_fn(
        _out({"image": wild, "text": good}, {"image": image_mask, "text": image_mask | True}),
        target,
    )
    assert torch.allclose(base, noisy)


def test_head_without_rows_adds_no_regulariser() -> None:
    loss_fn = UncertaintyWeightedLoss()
    loss_fn.log_var.data = torch.tensor([1.0, 2.0, 3.0])
    logits = torch.zeros(4, 2)
    none = torch.zeros(4, dtype=torch.bool)
    out = loss_fn(
        _out({"image": logits, "fused": logits}, {"image": none, "fused": none}),
        torch.zeros(4, dtype=torch.long),
    )
    assert float(out) == 0.0


def test_formula_matches_design() -> None:
    """L = Σ exp(-s_i)·CE_i + s_i/2 with s = log σ²."""
    loss_fn = UncertaintyWeightedLoss()
    s = torch.tensor([0.5, -0.3, 1.2])
    loss_fn.log_var.data = s.clone()
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 0])
    full = torch.ones(4, dtype=torch.bool)
    out = loss_fn(
        _out(
            {h: logits for h in ("image", "text", "fused")},
            {h: full for h in ("image", "text", "fused")},
        ),
        target,
    )
    ce = torch.nn.functional.cross_entropy(logits, target)
    expected = sum(torch.exp(-s[i]) * ce + 0.5 * s[i] for i in range(3))
    assert torch.allclose(out, expected)


def test_uncertainty_weights_are_learned() -> None:
    loss_fn = UncertaintyWeightedLoss()
    logits = torch.randn(8, 3, requires_grad=True)
    full = torch.ones(8, dtype=torch.bool)
    out = loss_fn(_out({"image": logits}, {"image": full}), torch.zeros(8, dtype=torch.long))
    out.backward()
    assert loss_fn.log_var.grad is not None and loss_fn.log_var.grad[0] != 0


def _all_heads(logits: torch.Tensor) -> HeadLogits:
    full = torch.ones(logits.shape[0], dtype=torch.bool)
    return HeadLogits(
        {h: logits for h in ("image", "text", "fused")},
        {h: full for h in ("image", "text", "fused")},
        torch.zeros(logits.shape[0], 2),
    )


def test_row_weights_of_one_are_the_plain_mean_and_zero_drops_a_row() -> None:
    loss_fn = UncertaintyWeightedLoss()
    loss_fn.log_var.data = torch.tensor([0.2, -0.1, 0.4])
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 0, 1])
    plain = loss_fn(_all_heads(logits), target)
    assert torch.allclose(loss_fn(_all_heads(logits), target, torch.ones(5)), plain)
    dropped = loss_fn(_all_heads(logits[:4]), target[:4])
    zero_last = loss_fn(_all_heads(logits), target, torch.tensor([1.0, 1, 1, 1, 0]))
    assert torch.allclose(zero_last, dropped)


def test_a_row_weighing_two_counts_as_two_copies() -> None:
    loss_fn = UncertaintyWeightedLoss()
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 0, 1])
    doubled = loss_fn(_all_heads(torch.cat([logits, logits[:1]])), torch.cat([target, target[:1]]))
    weighted = loss_fn(_all_heads(logits), target, torch.tensor([2.0, 1.0, 1.0]))
    assert torch.allclose(doubled, weighted)
