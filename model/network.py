"""Late-fusion networks: the three-head "trident" and its linear (softmax-regression) sibling.

Both read `(image, text, image_mask, text_mask)` and return `HeadLogits`. A branch only ever
sees the rows whose modality is present (so batch norm never learns from placeholder zeros);
the fused head only sees rows with both. Dropout is a function passed in, so the same code
serves training (`F.dropout`), deterministic prediction (identity) and MC-Dropout (cheap
pre-drawn masks, see `model.predict`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

Dropout = Callable[[torch.Tensor], torch.Tensor]
HEADS = ("image", "text", "fused")


def no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a network; stored in every checkpoint."""

    n_classes: int
    image_dim: int | None  # None: the data has no image view at all
    text_dim: int | None
    family: str = "trident"  # "trident" | "linear"
    d: int = 128
    dropout: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadLogits:
    """Per head: `(B, C)` logits and the `(B,)` bool mask of rows the head is defined for.

    Rows outside a head's mask hold zeros and must not be read. `features` is `(B, F)`: the
    representation the diversity stage clusters on (branch outputs side by side).
    """

    logits: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    features: torch.Tensor


def _rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x[mask]`, without the gather when every row is present (the common case)."""
    return x if bool(mask.all()) else x[mask]


def _place(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter `(n_present, F)` back to `(B, F)` with zeros elsewhere; no copy when all present."""
    if values.shape[0] == mask.shape[0]:
        return values
    out = values.new_zeros(mask.shape[0], values.shape[1])
    out[mask] = values
    return out


def _block(n_in: int, n_out: int) -> nn.Sequential:
    """Linear → ReLU → BN: the unit both branches and the fused trunk are built from."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out))


@dataclass(frozen=True)
class FusedPath:
    """The trident's layers from the branches' first dropout to the fused head."""

    image_mid: nn.Module
    text_mid: nn.Module
    fused_in: nn.Module
    fused_mid: nn.Module
    fused_head: nn.Module


class Trident(nn.Module):
    """Image branch, text branch, fused trunk; heads on each branch and on the fused trunk."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d, cfg.n_classes
        self.image_in = _block(cfg.image_dim, 4 * d) if cfg.image_dim else None
        self.image_mid = _block(4 * d, 2 * d) if cfg.image_dim else None
        self.text_in = _block(cfg.text_dim, 2 * d) if cfg.text_dim else None
        self.text_mid = _block(2 * d, 2 * d) if cfg.text_dim else None
        self.image_head = nn.Linear(2 * d, c) if cfg.image_dim else None
        self.text_head = nn.Linear(2 * d, c) if cfg.text_dim else None
        both = bool(cfg.image_dim and cfg.text_dim)
        self.fused_in = _block(4 * d, d) if both else None
        self.fused_mid = _block(d, d) if both else None
        self.fused_head = nn.Linear(d, c) if both else None

    @property
    def feature_dim(self) -> int:
        return 2 * self.cfg.d * (bool(self.cfg.image_dim) + bool(self.cfg.text_dim))

    def fused_path(self) -> FusedPath:
        """The fused trunk's layers; ValueError for a trident built with one view only."""
        im, tm, fi = self.image_mid, self.text_mid, self.fused_in
        fm, fh = self.fused_mid, self.fused_head
        if im is None or tm is None or fi is None or fm is None or fh is None:
            raise ValueError("this trident has no fused trunk (one view only)")
        return FusedPath(im, tm, fi, fm, fh)

    def prefix(
        self, image: torch.Tensor | None, text: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Deterministic part up to the first dropout: `(n_img, 4d)` and `(n_txt, 2d)`.

        Takes only the rows whose modality is present.
        """
        hi = self.image_in(image) if self.image_in is not None and image is not None else None
        ht = self.text_in(text) if self.text_in is not None and text is not None else None
        return hi, ht

    def forward(
        self,
        image: torch.Tensor | None,
        text: torch.Tensor | None,
        image_mask: torch.Tensor,
        text_mask: torch.Tensor,
        drop: Dropout = no_dropout,
    ) -> HeadLogits:
        """`image (B, Di)`, `text (B, Dt)`, masks `(B,)` bool → logits of every head."""
        img_rows = _rows(image, image_mask) if image is not None else None  # (n_img, Di)
        txt_rows = _rows(text, text_mask) if text is not None else None  # (n_txt, Dt)
        hi, ht = self.prefix(img_rows, txt_rows)
        return self.from_prefix(hi, ht, image_mask, text_mask, drop)

    def from_prefix(
        self,
        hi: torch.Tensor | None,
        ht: torch.Tensor | None,
        image_mask: torch.Tensor,
        text_mask: torch.Tensor,
        drop: Dropout,
    ) -> HeadLogits:
        """Everything after the prefix. `hi (n_img, 4d)`, `ht (n_txt, 2d)`, masks `(B,)`."""
        c = self.cfg.n_classes
        logits, masks, feats = {}, {}, []
        zi = zt = None
        if hi is not None and self.image_mid is not None and self.image_head is not None:
            zi = _place(drop(self.image_mid(drop(hi))), image_mask)  # (B, 2d)
            logits["image"], masks["image"] = self._scatter(self.image_head, zi, image_mask, c)
            feats.append(zi)
        if ht is not None and self.text_mid is not None and self.text_head is not None:
            zt = _place(drop(self.text_mid(drop(ht))), text_mask)  # (B, 2d)
            logits["text"], masks["text"] = self._scatter(self.text_head, zt, text_mask, c)
            feats.append(zt)
        if (
            zi is not None
            and zt is not None
            and self.fused_in
            and self.fused_mid
            and self.fused_head
        ):
            both = image_mask & text_mask
            fused = torch.cat([_rows(zi, both), _rows(zt, both)], dim=1)  # (n_both, 4d)
            h = self.fused_mid(drop(self.fused_in(fused)))  # (n_both, d)
            logits["fused"], masks["fused"] = _place(self.fused_head(h), both), both  # (B, C)
        return HeadLogits(logits, masks, torch.cat(feats, dim=1))

    @staticmethod
    def _scatter(
        head: nn.Module, z: torch.Tensor, mask: torch.Tensor, c: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _place(head(_rows(z, mask)), mask), mask  # (B, C)


class LinearSoftmax(nn.Module):
    """Softmax regression per view plus one on the concatenation (the trident with no hidden
    layers); used to reproduce published linear-model experiments. No dropout, no BN."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.n_classes
        self.image_head = nn.Linear(cfg.image_dim, c) if cfg.image_dim else None
        self.text_head = nn.Linear(cfg.text_dim, c) if cfg.text_dim else None
        both = bool(cfg.image_dim and cfg.text_dim)
        self.fused_head = nn.Linear(cfg.image_dim + cfg.text_dim, c) if both else None  # type: ignore[operator]

    @property
    def feature_dim(self) -> int:
        return (self.cfg.image_dim or 0) + (self.cfg.text_dim or 0)

    def prefix(self, image, text):  # type: ignore[no-untyped-def]
        return image, text  # nothing deterministic to cache: there is no dropout

    def forward(self, image, text, image_mask, text_mask, drop: Dropout = no_dropout) -> HeadLogits:  # type: ignore[no-untyped-def]
        img_rows = image[image_mask] if image is not None else None
        txt_rows = text[text_mask] if text is not None else None
        return self.from_prefix(img_rows, txt_rows, image_mask, text_mask, drop)

    def from_prefix(self, hi, ht, image_mask, text_mask, drop: Dropout) -> HeadLogits:  # type: ignore[no-untyped-def]
        batch, c = image_mask.shape[0], self.cfg.n_classes
        logits, masks, feats = {}, {}, []
        zi = zt = None
        if hi is not None and self.image_head is not None:
            zi = hi.new_zeros(batch, hi.shape[1])
            zi[image_mask] = hi
            logits["image"], masks["image"] = Trident._scatter(self.image_head, zi, image_mask, c)
            feats.append(zi)
        if ht is not None and self.text_head is not None:
            zt = ht.new_zeros(batch, ht.shape[1])
            zt[text_mask] = ht
            logits["text"], masks["text"] = Trident._scatter(self.text_head, zt, text_mask, c)
            feats.append(zt)
        if zi is not None and zt is not None and self.fused_head is not None:
            both = image_mask & text_mask
            out = zi.new_zeros(batch, c)
            out[both] = self.fused_head(torch.cat([zi[both], zt[both]], dim=1))
            logits["fused"], masks["fused"] = out, both
        return HeadLogits(logits, masks, torch.cat(feats, dim=1))


Network = Trident | LinearSoftmax  # what a Classifier holds


def build_network(cfg: NetConfig) -> Network:
    if not (cfg.image_dim or cfg.text_dim):
        raise ValueError("a network needs at least one of image_dim, text_dim")
    if cfg.family == "trident":
        return Trident(cfg)
    if cfg.family == "linear":
        return LinearSoftmax(cfg)
    raise ValueError(f"unknown model family {cfg.family!r} (trident, linear)")
