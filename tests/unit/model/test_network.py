"""Trident shapes, missing-modality routing, and the data/standardiser contracts."""

import numpy as np
import pytest
import torch

from model.data import Standardizer, Views
from model.network import NetConfig, Trident, build_network
from postclf_errors import InvalidInputError


def _views(n: int = 6, seed: int = 0) -> Views:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, 5)).astype(np.float32)
    text = rng.normal(size=(n, 3)).astype(np.float32)
    image[0] = np.nan  # row 0: text only
    text[1] = np.nan  # row 1: image only
    return Views.from_nan_rows(image, text)


def test_layer_widths_follow_design() -> None:
    net = Trident(NetConfig(n_classes=7, image_dim=5, text_dim=3, d=8))
    assert net.image_in[0].out_features == 32 and net.image_mid[0].out_features == 16  # 4d, 2d
    assert net.text_in[0].out_features == 16 and net.text_mid[0].out_features == 16  # 2d, 2d
    assert net.fused_in[0].in_features == 32 and net.fused_mid[0].out_features == 8  # 4d→d→d
    assert net.fused_head.out_features == 7 and net.image_head.in_features == 16


def test_heads_defined_only_where_modalities_present() -> None:
    v = _views()
    net = Trident(NetConfig(n_classes=4, image_dim=5, text_dim=3, d=4)).eval()
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    out = net(t(v.image), t(v.text), t(v.image_mask), t(v.text_mask))
    assert out.masks["image"].tolist() == [False, True, True, True, True, True]
    assert out.masks["text"].tolist() == [True, False, True, True, True, True]
    assert out.masks["fused"].tolist() == [False, False, True, True, True, True]
    assert out.features.shape == (6, 16)


def test_missing_rows_never_reach_batch_norm() -> None:
    """Placeholder rows must not move BN statistics: garbage there changes nothing."""
    v = _views(n=8)
    torch.manual_seed(0)
    a = Trident(NetConfig(n_classes=3, image_dim=5, text_dim=3, d=4)).train()
    b = Trident(NetConfig(n_classes=3, image_dim=5, text_dim=3, d=4)).train()
    b.load_state_dict(a.state_dict())
    garbage = v.image.copy()
    garbage[~v.image_mask] = 1e6
    t = torch.from_numpy
    a(t(v.image), t(v.text), t(v.image_mask), t(v.text_mask))
    b(t(garbage), t(v.text), t(v.image_mask), t(v.text_mask))
    assert torch.allclose(a.image_in[2].running_mean, b.image_in[2].running_mean)


def test_single_view_network_has_only_its_head() -> None:
    net = build_network(NetConfig(n_classes=3, image_dim=5, text_dim=None, d=4)).eval()
    x = torch.randn(4, 5)
    out = net(x, None, torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    assert set(out.logits) == {"image"}


def test_partly_nan_row_is_an_error_not_missing() -> None:
    image = np.ones((2, 3), np.float32)
    image[1, 0] = np.nan
    with pytest.raises(InvalidInputError, match="image"):
        Views.from_nan_rows(image, None)


def test_standardizer_ignores_missing_rows() -> None:
    v = _views(n=50)
    scaler = Standardizer.fit(v)
    z = scaler.transform(v)
    present = z.image[v.image_mask]
    assert np.allclose(present.mean(0), 0, atol=1e-5)
    assert np.all(z.image[~v.image_mask] == 0)


def test_standardizer_leaves_constant_features_unscaled() -> None:
    """A feature constant in training (e.g. an unlit pixel) must not explode at prediction."""
    x = np.zeros((10, 3), np.float32)
    x[:, 0] = np.arange(10)
    scaler = Standardizer.fit(Views.from_nan_rows(x, None))
    later = np.ones((1, 3), np.float32)
    z = scaler.transform(Views.from_nan_rows(later, None))
    assert np.abs(z.image[0, 1:]).max() <= 1.0
