"""A trained model as a plain callable of numpy arrays: prediction, MC-Dropout, checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from model.data import Standardizer, Views
from model.network import HEADS, Dropout, NetConfig, build_network, no_dropout
from postclf_errors import InvalidInputError

CHECKPOINT_FORMAT = 1


class Inputs(NamedTuple):
    """Standardised tensors in the network's layout: `(B, Di)`, `(B, Dt)`, masks `(B,)` bool."""

    image: torch.Tensor | None
    text: torch.Tensor | None
    image_mask: torch.Tensor
    text_mask: torch.Tensor


@dataclass(frozen=True)
class Predictions:
    """`probs (n, C)` from the head used for each row, `head (n,)` its name, `features (n, F)`."""

    probs: np.ndarray
    head: np.ndarray
    features: np.ndarray | None = None


class MaskBankDropout:
    """MC-Dropout masks from numpy random bytes: far cheaper than torch's `bernoulli_` on CPU.

    The drop probability is rounded to a multiple of 1/256 (0.25 is exact).
    """

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        self.threshold = round(p * 256)
        self.scale = 256.0 / (256 - self.threshold) if self.threshold < 256 else 0.0
        self.rng = rng

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold == 0:
            return x
        raw = np.frombuffer(bytearray(self.rng.bytes(x.numel())), dtype=np.uint8).reshape(x.shape)
        keep = torch.from_numpy(raw) >= self.threshold  # same shape as x, P(keep) = 1 - p
        return torch.where(keep, x * self.scale, x.new_zeros(()))


def head_per_row(views: Views, net_cfg: NetConfig) -> np.ndarray:
    """'fused' where both views are present (and the model has both), else the single one."""
    n = len(views)
    has_img = views.image_mask if (views.image_mask is not None and net_cfg.image_dim) else None
    has_txt = views.text_mask if (views.text_mask is not None and net_cfg.text_dim) else None
    img = has_img if has_img is not None else np.zeros(n, bool)
    txt = has_txt if has_txt is not None else np.zeros(n, bool)
    head = np.full(n, "", dtype="<U5")
    head[img] = "image"
    head[txt] = "text"
    head[img & txt] = "fused" if (net_cfg.image_dim and net_cfg.text_dim) else "image"
    if (head == "").any():
        row = int(np.flatnonzero(head == "")[0])
        raise InvalidInputError("no embedding this model can use", f"posts[{row}]")
    return head


@dataclass
class Classifier:
    """Network + input standardiser + class names + per-head temperatures + metadata."""

    net: torch.nn.Module
    standardizer: Standardizer
    classes: list[str]
    temperature: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def net_config(self) -> NetConfig:
        return self.net.cfg  # type: ignore[return-value]

    def tensors(self, views: Views) -> Inputs:
        """Standardised `(image, text, image_mask, text_mask)` tensors in the model's layout."""
        cfg, n = self.net_config, len(views)
        for name, dim in (("image", cfg.image_dim), ("text", cfg.text_dim)):
            got = views.dims[name]
            if got is not None and dim is not None and got != dim:
                raise InvalidInputError(f"dimension {got}, model expects {dim}", name)
        z = self.standardizer.transform(_drop_unknown(views, cfg))

        def t(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

        def mask(m: np.ndarray | None) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.bool) if m is None else torch.from_numpy(m)

        return Inputs(t(z.image), t(z.text), mask(z.image_mask), mask(z.text_mask))

    def _probs(self, logits: dict[str, torch.Tensor], head: np.ndarray) -> np.ndarray:
        """Calibrated softmax of the head chosen per row. `head (B,)` → `(B, C)`."""
        out = np.empty((head.shape[0], len(self.classes)), np.float32)
        for name in HEADS:
            rows = head == name
            if rows.any():
                scaled = logits[name][torch.from_numpy(rows)] / self.temperature.get(name, 1.0)
                out[rows] = torch.softmax(scaled, dim=1).numpy()
        return out

    @torch.inference_mode()
    def predict(
        self, views: Views, batch_size: int = 8192, with_features: bool = False
    ) -> Predictions:
        """Deterministic prediction (dropout off, BN in eval) of `n` posts."""
        self.net.eval()
        head = head_per_row(views, self.net_config)
        probs, feats = [], []
        for start in range(0, len(views), batch_size):
            part = views.take(slice(start, start + batch_size))
            out = self.net(*self.tensors(part))
            probs.append(self._probs(out.logits, head[start : start + batch_size]))
            if with_features:
                feats.append(out.features.numpy())
        return Predictions(
            probs=np.concatenate(probs) if probs else np.empty((0, len(self.classes)), np.float32),
            head=head,
            features=np.concatenate(feats) if with_features and feats else None,
        )

    @torch.inference_mode()
    def predict_mc(
        self, views: Views, samples: int, rng: np.random.Generator, batch_size: int = 1024
    ) -> np.ndarray:
        """MC-Dropout: `(n, T, C)` probabilities, dropout on, batch norm in eval.

        The prefix up to the first dropout is computed once per post and reused by all T
        samples; the T samples run as one `(T·B)` batch.
        """
        self.net.eval()
        head = head_per_row(views, self.net_config)
        drop: Dropout = MaskBankDropout(self.net_config.dropout, rng)
        if self.net_config.family == "linear":
            drop = no_dropout
        out = np.empty((len(views), samples, len(self.classes)), np.float32)
        for start in range(0, len(views), batch_size):
            part = views.take(slice(start, start + batch_size))
            img, txt, im, tm = self.tensors(part)
            hi, ht = self.net.prefix(  # type: ignore[operator]
                img[im] if img is not None else None, txt[tm] if txt is not None else None
            )  # (n_img, 4d), (n_txt, 2d): computed once for all T samples
            rep = HeadRepeat(samples)
            logits = self.net.from_prefix(  # type: ignore[operator]
                rep(hi), rep(ht), im.repeat(samples), tm.repeat(samples), drop
            ).logits
            b = im.shape[0]
            probs = self._probs(logits, np.tile(head[start : start + b], samples))  # (T·B, C)
            out[start : start + b] = probs.reshape(samples, b, -1).transpose(1, 0, 2)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, path: Path, extra_meta: dict[str, Any] | None = None) -> None:
        """Write atomically (temporary file, fsync, rename); the checkpoint rebuilds itself."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "net_config": self.net_config.to_dict(),
            "state_dict": self.net.state_dict(),
            "standardizer": self.standardizer.to_state(),
            "classes": list(self.classes),
            "temperature": dict(self.temperature),
            "meta": {**self.meta, **(extra_meta or {})},
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Classifier:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: unsupported checkpoint format {state.get('format')!r}")
        net = build_network(NetConfig(**state["net_config"]))
        net.load_state_dict(state["state_dict"])
        net.eval()
        return cls(
            net=net,
            standardizer=Standardizer.from_state(state["standardizer"]),
            classes=list(state["classes"]),
            temperature=dict(state["temperature"]),
            meta=dict(state["meta"]),
        )


class HeadRepeat:
    """Repeat a `(n, F)` tensor T times along rows: `(T·n, F)`, block t = sample t."""

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __call__(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.repeat(self.samples, 1)  # (T·n, F)


def _drop_unknown(views: Views, cfg: NetConfig) -> Views:
    """Drop a view the model has no branch for (its rows then count as missing)."""
    image = views.image if cfg.image_dim else None
    text = views.text if cfg.text_dim else None
    return (
        Views(
            image,
            text,
            views.image_mask if image is not None else None,
            views.text_mask if text is not None else None,
        )
        if (image is not None or text is not None)
        else views
    )
