"""The served model's deterministic prediction, folded into a few numpy matrix products.

In eval mode everything between two linear layers that is not a ReLU is a per-feature affine
map: the input standardiser before the first layer, each batch norm after a ReLU, and the
temperature before each head's softmax. Each such map is folded into the next linear layer
(`a·x + c` followed by `x @ W + b` is `x @ (a[:, None]·W) + (c @ W + b)`), so a branch is two
`matmul → bias → ReLU` steps and a head is one product. Only the head that serves a row is
computed for it (a post with both views never runs the branch heads), and the fused trunk's
first layer is two products on the branch outputs instead of one on their concatenation.

`coarse()` gives a bfloat16 twin for the pool-scoring prefilter (`batch_jobs.scoring`): same
code, its layers in torch bf16 tensors.

Why: `Classifier.predict` walks torch modules (~40 dispatched ops, ~240 µs at batch 1 on one
core, 19 µs per post at 64); here a batch of one costs tens of µs and a batch of 64 ~⅔ of
the module walk (see README, serving). Results equal `Classifier.predict` to float32 rounding
(tests/unit/model/test_folded.py). Built once per loaded version; never mutated after.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.classifier import Classifier, check_dims, drop_unknown, head_per_row
from model.data import Views
from model.network import LinearSoftmax, Trident

F32 = np.float32


@dataclass(frozen=True)
class Dense:
    """`x @ w + b`, then ReLU when `relu`. `w (in, out)`, `b (out,)`."""

    w: np.ndarray
    b: np.ndarray
    relu: bool

    def product(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w

    def activate(self, h: np.ndarray) -> np.ndarray:
        if self.relu:
            np.maximum(h, F32(0.0), out=h)
        return h

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = self.product(x)
        h += self.b
        return self.activate(h)


@dataclass(frozen=True)
class Bf16Dense:
    """The same layer in bfloat16 torch tensors, for the coarse pass (`FoldedClassifier.coarse`).
    `w (out, in)`: `F.linear`'s layout, which oneDNN runs on AMX / AVX512-BF16 units."""

    w: torch.Tensor
    b: torch.Tensor
    relu: bool

    @classmethod
    def of(cls, d: Dense) -> Bf16Dense:
        bf = torch.bfloat16
        return cls(
            torch.from_numpy(np.ascontiguousarray(d.w.T)).to(bf),
            torch.from_numpy(d.b).to(bf),
            d.relu,
        )

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return h.relu_() if self.relu else h

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(F.linear(x, self.w, self.b))


class Layer(Protocol):
    """A folded layer on numpy float32 (`Dense`) or torch bf16 (`Bf16Dense`) arrays."""

    @property
    def b(self) -> Any: ...

    def product(self, x: Any) -> Any: ...

    def activate(self, h: Any) -> Any: ...

    def __call__(self, x: Any) -> Any: ...


Affine = tuple[np.ndarray, np.ndarray]  # per-feature (scale, shift): x ↦ scale·x + shift


def _linear(layer: nn.Linear, before: Affine, relu: bool, temperature: float = 1.0) -> Dense:
    """`layer` with the affine map `before` (on its input) folded in, its output ÷ temperature."""
    w = layer.weight.detach().numpy().T.astype(np.float64) / temperature  # (in, out)
    b = layer.bias.detach().numpy().astype(np.float64) / temperature
    scale, shift = before
    return Dense((scale[:, None] * w).astype(F32), (shift @ w + b).astype(F32), relu)


def _bn_affine(bn: nn.BatchNorm1d) -> Affine:
    assert bn.running_mean is not None and bn.running_var is not None  # tracked stats
    scale = bn.weight.detach().numpy() / np.sqrt(bn.running_var.numpy() + bn.eps)
    shift = bn.bias.detach().numpy() - scale * bn.running_mean.numpy()
    return scale.astype(np.float64), shift.astype(np.float64)


def _block(block: nn.Sequential, before: Affine) -> tuple[Dense, Affine]:
    """A `Linear → ReLU → BN` block: the folded layer and the BN left for the next one."""
    linear, bn = block[0], block[2]
    assert isinstance(linear, nn.Linear) and isinstance(bn, nn.BatchNorm1d)
    return _linear(linear, before, relu=True), _bn_affine(bn)


def _split_first(
    linear: nn.Linear, zi: Affine, zt: Affine, relu: bool, temperature: float = 1.0
) -> tuple[Dense, Dense]:
    """A layer on `[image | text]` with each half's affine folded in, split into its image
    half (carrying the bias) and its text half (bias zero), so no concatenation is needed."""
    both = (np.concatenate([zi[0], zt[0]]), np.concatenate([zi[1], zt[1]]))
    whole = _linear(linear, both, relu, temperature)
    k = zi[0].shape[0]
    return Dense(whole.w[:k], whole.b, relu), Dense(whole.w[k:], np.zeros_like(whole.b), relu)


@dataclass(frozen=True)
class Branch:
    """One modality: its trunk layers and the affine map its output still carries."""

    layers: tuple[Layer, ...]
    out: Affine
    head: Layer  # temperature folded in

    def to_bf16(self) -> Branch:
        """Its trunk in bf16; the head (small, and most of the error in bf16) stays float32."""
        return Branch(tuple(_bf16(d) for d in self.layers), self.out, self.head)

    def trunk(self, x: Any) -> Any:  # numpy or torch, as the layers are
        for layer in self.layers:
            x = layer(x)
        return x


@dataclass(frozen=True)
class Fused:
    """The fused trunk: first layer split into its image and text halves, then the rest."""

    first_image: Layer  # bias of the first layer lives here
    first_text: Layer  # bias zero
    layers: tuple[Layer, ...]  # the rest, the temperature-scaled head last

    def to_bf16(self) -> Fused:
        """The first layer in bf16; the rest (~3% of the products, but in bf16 ⅔ of the margin
        error, README) stays float32."""
        return Fused(_bf16(self.first_image), _bf16(self.first_text), self.layers)

    def __call__(self, zi: Any, zt: Any) -> Any:  # numpy or torch, as the layers are
        h = self.first_image.product(zi)
        h += self.first_text.product(zt)
        h += self.first_image.b
        h = _float32(self.first_image.activate(h))  # the linear family's fused head has no ReLU
        for layer in self.layers:
            h = layer(h)
        return h


def _bf16(layer: Layer) -> Bf16Dense:
    assert isinstance(layer, Dense)  # only a float32 model is converted
    return Bf16Dense.of(layer)


def _numpy_in(x: np.ndarray) -> np.ndarray:
    return x


def _bf16_in(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)


def _float32(h: Any) -> np.ndarray:
    """A layer's output as float32 numpy (a bf16 trunk's output is converted)."""
    return h.float().numpy() if isinstance(h, torch.Tensor) else h


@functools.cache
def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 matrix products at least 2× float32's speed (AMX,
    AVX512-BF16): elsewhere torch emulates bf16 and a coarse pass would cost more than it saves.
    Measured once per process on a layer-sized product (~10 ms), best of 3 each."""

    def best(dtype: torch.dtype) -> float:
        x, w = torch.ones(2048, 384, dtype=dtype), torch.ones(512, 384, dtype=dtype)
        F.linear(x, w)  # first call: oneDNN's kernel selection
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            F.linear(x, w)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) * 2 <= best(torch.float32)


def softmax_(logits: np.ndarray) -> np.ndarray:
    """Row softmax of `(n, C)` float32, in place."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


class FoldedClassifier:
    """`predict(views) → (probs (n, C), head (n,))`, equal to `Classifier.predict`'s."""

    def __init__(self, clf: Classifier) -> None:
        self.cfg = clf.net_config
        self.classes = clf.classes
        t = clf.temperature
        std = clf.standardizer
        inputs: dict[str, Affine] = {
            name: (1.0 / std.std[name].astype(np.float64), -std.mean[name] / std.std[name])
            for name in std.mean
        }
        net = clf.net
        # A view's rows as the trunks take them (bf16 tensors in the `coarse` twin).
        self._enter: Callable[[np.ndarray], Any] = _numpy_in
        self.branches: dict[str, Branch] = {}
        if isinstance(net, Trident):
            self._fold_trident(net, inputs, t)
        elif isinstance(net, LinearSoftmax):
            self._fold_linear(net, inputs, t)
        else:  # pragma: no cover - a new family must say how it folds
            raise TypeError(f"cannot fold a {type(net).__name__}")

    def _fold_trident(self, net: Trident, inputs: dict[str, Affine], t: dict) -> None:
        blocks = {"image": (net.image_in, net.image_mid, net.image_head),
                  "text": (net.text_in, net.text_mid, net.text_head)}  # fmt: skip
        for name, (first, mid, head) in blocks.items():
            if first is None or mid is None or head is None:
                continue
            l1, after1 = _block(first, inputs[name])
            l2, after2 = _block(mid, after1)
            out_head = _linear(head, after2, relu=False, temperature=t.get(name, 1.0))
            self.branches[name] = Branch((l1, l2), after2, out_head)
        self.fused: Fused | None = None
        if net.fused_in is not None and net.fused_mid is not None and net.fused_head is not None:
            zi, zt = self.branches["image"].out, self.branches["text"].out
            linear, bn = net.fused_in[0], net.fused_in[2]
            assert isinstance(linear, nn.Linear) and isinstance(bn, nn.BatchNorm1d)
            first_image, first_text = _split_first(linear, zi, zt, relu=True)
            second, after_mid = _block(net.fused_mid, _bn_affine(bn))
            last = _linear(net.fused_head, after_mid, relu=False, temperature=t.get("fused", 1.0))
            self.fused = Fused(first_image, first_text, (second, last))

    def _fold_linear(self, net: LinearSoftmax, inputs: dict[str, Affine], t: dict) -> None:
        for name, head in (("image", net.image_head), ("text", net.text_head)):
            if head is not None:
                folded = _linear(head, inputs[name], relu=False, temperature=t.get(name, 1.0))
                self.branches[name] = Branch((), inputs[name], folded)
        self.fused = None
        if net.fused_head is not None:
            image, text = _split_first(
                net.fused_head, inputs["image"], inputs["text"], False, t.get("fused", 1.0)
            )
            self.fused = Fused(image, text, ())

    def coarse(self) -> FoldedClassifier:
        """A twin with its trunks in bfloat16 (~6× float32's speed on AMX, `bf16_is_fast`) and
        the small last layers in float32; probabilities within ~1e-3. A prefilter whose picks
        the caller re-scores in float32 (`batch_jobs.scoring`), never a served answer."""
        twin = copy.copy(self)
        twin.branches = {name: b.to_bf16() for name, b in self.branches.items()}
        twin.fused = self.fused.to_bf16() if self.fused is not None else None
        twin._enter = _bf16_in
        return twin

    def predict(self, views: Views) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities of the head serving each row `(n, C)`, and that head `(n,)`.

        An input large enough to overflow gives non-finite rows, silently (the server rejects
        them by name), as the torch path does."""
        with np.errstate(over="ignore", invalid="ignore"):
            probs, head, _ = self._predict(views)
        return probs, head

    def predict_with_features(self, views: Views) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`predict` plus the diversity features `(n, F)`: each branch's output side by side,
        zeros where its view is missing (`Classifier.predict(with_features=True)`'s)."""
        with np.errstate(over="ignore", invalid="ignore"):
            probs, head, z = self._predict(views)
        parts = []
        for name, branch in self.branches.items():  # image, then text: the network's order
            scale, shift = branch.out
            part = np.zeros((len(head), scale.shape[0]), F32)
            if name in z:
                rows, zb = z[name]
                part[rows] = _float32(zb) * scale.astype(F32) + shift.astype(F32)
            parts.append(part)
        return probs, head, np.concatenate(parts, axis=1)

    def _predict(self, views: Views) -> tuple[np.ndarray, np.ndarray, dict]:
        """Probabilities, heads, and per branch (rows it ran on, its trunk output)."""
        check_dims(views, self.cfg)
        views = drop_unknown(views, self.cfg)
        head = head_per_row(views, self.cfg)
        fused = head == "fused"
        z: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name → (rows, trunk output)
        if self.fused is not None and fused.all():  # the common case: no row selection at all
            assert views.image is not None and views.text is not None  # "fused" needs both
            z["image"] = (fused, self.branches["image"].trunk(self._enter(views.image)))
            z["text"] = (fused, self.branches["text"].trunk(self._enter(views.text)))
            return softmax_(self.fused(z["image"][1], z["text"][1])), head, z
        out = np.empty((len(views), len(self.classes)), F32)
        for name, branch in self.branches.items():
            rows = (head == name) | fused
            if rows.any():
                x = getattr(views, name)
                z[name] = (rows, branch.trunk(self._enter(x if rows.all() else x[rows])))
        for name, branch in self.branches.items():
            own = head == name
            if own.any():
                rows, zb = z[name]
                pick = _rows_of(zb, own[rows])
                out[own] = softmax_(branch.head(_float32(pick)))
        if fused.any():
            assert self.fused is not None  # head_per_row names "fused" only when it exists
            (ri, zi), (rt, zt) = z["image"], z["text"]
            pick_i, pick_t = _rows_of(zi, fused[ri]), _rows_of(zt, fused[rt])
            out[fused] = softmax_(self.fused(pick_i, pick_t))
        return out, head, z


def _rows_of(z: Any, mask: np.ndarray) -> Any:
    """The rows of a trunk output `z` (numpy or torch) where `mask`; `z` itself, uncopied,
    when that is all of them (a chunk's image rows are often all its fused rows)."""
    if mask.all():
        return z
    return z[torch.from_numpy(mask)] if isinstance(z, torch.Tensor) else z[mask]
