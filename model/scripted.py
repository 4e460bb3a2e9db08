"""The folded model (model/folded.py) as one TorchScript graph, whose call runs without the GIL.

Why: in the server, the event loop holds the GIL for everything else a Classify call costs
(gRPC's own work, decoding, the response). numpy and eager torch release the GIL inside each
product but take it back between operations, and a thread waiting for it waits up to the
interpreter's switch interval (5 ms) while the loop runs Python, so a forward pass handed to
another thread crawls (measured beside a busy Python thread: 2-3 passes a second, vs 16 for
this graph and 25 alone). A scripted module releases the GIL once, for its whole graph, so a
big batch computes on another core while the loop serves other calls (server/batcher.py).

Same folded layers (their arrays shared, not copied), same head per row; results equal
`FoldedClassifier.predict` to float32 rounding (tests/unit/model/test_scripted.py).
TorchScript is deprecated upstream (torch 2.13 warns; we filter that one notice): the server
serves without it if scripting ever fails (server/models.py), every pass then on numpy.
"""

# No `from __future__ import annotations`: TorchScript reads the attribute annotations.

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from model.classifier import check_dims, drop_unknown, head_per_row
from model.data import Views
from model.folded import Dense, FoldedClassifier

HEAD_CODES = {"fused": 0, "image": 1, "text": 2}  # the graph's per-row head argument
_NONE = torch.zeros(0, 0)  # a view the model has no branch for
_NO_LAYER = Dense(np.zeros((0, 0), np.float32), np.zeros(0, np.float32), False)  # never run


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@torch.jit.script
def _stack(x: Tensor, w: list[Tensor], b: list[Tensor], relu: list[bool]) -> Tensor:
    for i in range(len(w)):
        x = torch.addmm(b[i], x, w[i])
        if relu[i]:
            x = torch.relu(x)
    return x


class _Graph(nn.Module):
    """The scripted forward pass; `forward(image, text, head) → probs (n, C)`. Index 0 is the
    image branch, 1 the text branch; a branch the model lacks has no layers and `has` False."""

    # Declared for TorchScript, which cannot infer an empty list's element type.
    n_classes: int
    has: list[bool]
    trunk_w: list[list[Tensor]]
    trunk_b: list[list[Tensor]]
    trunk_relu: list[list[bool]]
    head_w: list[Tensor]
    head_b: list[Tensor]
    has_fused: bool
    fuse_w: list[Tensor]
    fuse_b: Tensor
    fuse_relu: bool
    rest_w: list[Tensor]
    rest_b: list[Tensor]
    rest_relu: list[bool]

    def __init__(self, folded: FoldedClassifier) -> None:
        super().__init__()
        self.n_classes = len(folded.classes)
        branches = [folded.branches.get(name) for name in ("image", "text")]
        self.has = [b is not None for b in branches]
        trunks = [_dense(b.layers) if b is not None else [] for b in branches]
        self.trunk_w = [[_t(d.w) for d in layers] for layers in trunks]
        self.trunk_b = [[_t(d.b) for d in layers] for layers in trunks]
        self.trunk_relu = [[d.relu for d in layers] for layers in trunks]
        heads = [_one(b.head) if b is not None else _NO_LAYER for b in branches]
        self.head_w, self.head_b = [_t(h.w) for h in heads], [_t(h.b) for h in heads]
        self.has_fused = folded.fused is not None
        first = (
            (_one(folded.fused.first_image), _one(folded.fused.first_text))
            if folded.fused is not None
            else (_NO_LAYER, _NO_LAYER)
        )
        self.fuse_w = [_t(first[0].w), _t(first[1].w)]
        self.fuse_b, self.fuse_relu = _t(first[0].b), first[0].relu  # image half has the bias
        rest = _dense(folded.fused.layers) if folded.fused is not None else []
        self.rest_w, self.rest_b = [_t(d.w) for d in rest], [_t(d.b) for d in rest]
        self.rest_relu = [d.relu for d in rest]

    def _trunk(self, k: int, x: Tensor) -> Tensor:
        return _stack(x, self.trunk_w[k], self.trunk_b[k], self.trunk_relu[k])

    def _fuse(self, zi: Tensor, zt: Tensor) -> Tensor:
        h = torch.addmm(torch.addmm(self.fuse_b, zi, self.fuse_w[0]), zt, self.fuse_w[1])
        if self.fuse_relu:
            h = torch.relu(h)
        return torch.softmax(_stack(h, self.rest_w, self.rest_b, self.rest_relu), 1)

    def forward(self, image: Tensor, text: Tensor, head: Tensor) -> Tensor:
        if self.has_fused and bool((head == 0).all()):  # the common case: no row selection
            return self._fuse(self._trunk(0, image), self._trunk(1, text))
        out = torch.empty(head.size(0), self.n_classes)
        z: list[Tensor] = []  # each branch's trunk output on its rows
        rows: list[Tensor] = []  # those rows (the branch's own and the fused ones)
        for k, x in enumerate([image, text]):
            mine = torch.nonzero((head == 0) | (head == k + 1)).squeeze(1)
            rows.append(mine)
            if not self.has[k] or mine.numel() == 0:
                z.append(torch.zeros(0, 0))
                continue
            zk = self._trunk(k, x.index_select(0, mine))
            z.append(zk)
            own = torch.nonzero(head.index_select(0, mine) == k + 1).squeeze(1)
            if own.numel() > 0:
                logits = torch.addmm(self.head_b[k], zk.index_select(0, own), self.head_w[k])
                out.index_copy_(0, mine.index_select(0, own), torch.softmax(logits, 1))
        fused = torch.nonzero(head == 0).squeeze(1)
        if self.has_fused and fused.numel() > 0:
            pick = [
                z[k].index_select(0, torch.nonzero(head.index_select(0, rows[k]) == 0).squeeze(1))
                for k in range(2)
            ]
            out.index_copy_(0, fused, self._fuse(pick[0], pick[1]))
        return out


def _dense(layers: tuple) -> list[Dense]:
    return [_one(layer) for layer in layers]


def _one(layer: object) -> Dense:
    assert isinstance(layer, Dense)  # a float32 model (not the bf16 `coarse` twin)
    return layer


class ScriptedClassifier:
    """`predict(views) → (probs (n, C), head (n,))`, as `FoldedClassifier.predict`; the forward
    pass itself runs without the GIL. Built once per loaded version (scripting takes ~0.1 s)."""

    def __init__(self, folded: FoldedClassifier) -> None:
        self.cfg, self.classes = folded.cfg, folded.classes
        with warnings.catch_warnings():  # its deprecation notice, once per loaded version
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", Warning)
            self._graph = torch.jit.script(_Graph(folded))

    def predict(self, views: Views) -> tuple[np.ndarray, np.ndarray]:
        check_dims(views, self.cfg)
        views = drop_unknown(views, self.cfg)
        head = head_per_row(views, self.cfg)
        codes = np.zeros(len(head), np.int64)
        for name, code in HEAD_CODES.items():
            codes[head == name] = code
        image = _t(views.image) if views.image is not None else _NONE
        text = _t(views.text) if views.text is not None else _NONE
        with torch.no_grad():
            probs = self._graph(image, text, torch.from_numpy(codes))
        return probs.numpy(), head
