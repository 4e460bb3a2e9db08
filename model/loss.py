"""Three-head loss weighted by learned uncertainty: L = Σ_i exp(-s_i)·CE_i + s_i / 2.

`s_i = log σ_i²` (log-variance for stability), so `exp(-s_i) = 1/σ_i²` and `s_i/2 = log σ_i`.
A head contributes only over the rows where its modality (or both, for fused) is present; a
head with no such rows in the batch contributes nothing, not even its regulariser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.network import HEADS, HeadLogits


class UncertaintyWeightedLoss(nn.Module):
    def __init__(self, heads: tuple[str, ...] = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.log_var = nn.Parameter(torch.zeros(len(heads)))  # (H,) one s_i per head

    def forward(
        self, out: HeadLogits, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`target (B,)` int64, optional row `weight (B,)` ≥ 0 → scalar loss. With weights a
        head's CE is their weighted mean over its rows (all ones: the plain mean)."""
        total = out.features.new_zeros(())
        for i, head in enumerate(self.heads):
            if head not in out.logits:
                continue
            mask = out.masks[head]  # (B,) bool
            if not mask.any():
                continue
            ce = _mean_ce(
                out.logits[head][mask], target[mask], None if weight is None else weight[mask]
            )
            s = self.log_var[i]
            total = total + torch.exp(-s) * ce + 0.5 * s
        return total

    def weights(self) -> dict[str, float]:
        """Current 1/σ² per head, for logs and checkpoints."""
        w = torch.exp(-self.log_var.detach())
        return {h: float(w[i]) for i, h in enumerate(self.heads)}


def _mean_ce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """CE averaged over rows `(n,)`, weighted when `weight (n,)` is given (0 if all weigh 0)."""
    if weight is None:
        return F.cross_entropy(logits, target)
    ce = F.cross_entropy(logits, target, reduction="none")  # (n,)
    return (ce * weight).sum() / weight.sum().clamp_min(1e-12)
