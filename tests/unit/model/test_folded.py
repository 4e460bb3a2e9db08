"""The folded serving path equals `Classifier.predict` for every family, head and view mix."""

import numpy as np
import pytest
import torch

from model.classifier import Classifier
from model.data import Standardizer, Views
from model.folded import FoldedClassifier
from model.network import LinearSoftmax, NetConfig, Trident
from postclf_errors import InvalidInputError

DI, DT, C = 12, 8, 5


def _randomized(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


def _classifier(family: str, image_dim: int | None, text_dim: int | None) -> Classifier:
    cfg = NetConfig(C, image_dim, text_dim, family=family, d=8)
    torch.manual_seed(0)
    net = _randomized(Trident(cfg) if family == "trident" else LinearSoftmax(cfg), 1)
    rng = np.random.default_rng(2)
    dims = {"image": image_dim, "text": text_dim}
    std = Standardizer(
        {k: rng.normal(size=d).astype(np.float32) for k, d in dims.items() if d},
        {k: rng.uniform(0.5, 2, size=d).astype(np.float32) for k, d in dims.items() if d},
    )
    temps = {"image": 1.7, "text": 0.6, "fused": 1.3}
    return Classifier(net, std, [f"c{i}" for i in range(C)], temps)


def _mixed_views(n: int, image: bool = True, text: bool = True) -> Views:
    """Rows with both views, image only, text only, interleaved."""
    rng = np.random.default_rng(3)
    im = rng.normal(size=(n, DI)).astype(np.float32) if image else None
    tx = rng.normal(size=(n, DT)).astype(np.float32) if text else None
    if image and text:
        im[1::3] = np.nan  # text only
        tx[2::3] = np.nan  # image only
    return Views.from_nan_rows(im, tx)


@pytest.mark.parametrize("family", ["trident", "linear"])
@pytest.mark.parametrize("rows", [slice(0, 1), slice(1, 2), slice(2, 3), slice(0, 30)])
def test_folded_equals_module_walk(family: str, rows: slice) -> None:
    """Fused-only, text-only, image-only single rows, and a mix of all three."""
    clf = _classifier(family, DI, DT)
    views = _mixed_views(30).take(rows)
    expected = clf.predict(views)
    probs, head = FoldedClassifier(clf).predict(views)
    assert (head == expected.head).all()
    np.testing.assert_allclose(probs, expected.probs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("image_dim, text_dim", [(DI, None), (None, DT)])
def test_one_view_models(image_dim: int | None, text_dim: int | None) -> None:
    clf = _classifier("trident", image_dim, text_dim)
    views = _mixed_views(7, image=image_dim is not None, text=text_dim is not None)
    probs, head = FoldedClassifier(clf).predict(views)
    expected = clf.predict(views)
    assert (head == expected.head).all()
    np.testing.assert_allclose(probs, expected.probs, rtol=1e-4, atol=1e-6)


def test_a_view_the_model_lacks_is_ignored() -> None:
    """A text embedding sent to an image-only model: the image head serves the post."""
    clf = _classifier("trident", DI, None)
    probs, head = FoldedClassifier(clf).predict(_mixed_views(6).take(np.array([0, 2])))
    assert (head == "image").all() and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_trained_model_matches(tiny_model, small_splits) -> None:
    views = small_splits["test"].views
    expected = tiny_model.predict(views)
    probs, head = FoldedClassifier(tiny_model).predict(views)
    assert (head == expected.head).all()
    np.testing.assert_allclose(probs, expected.probs, rtol=1e-4, atol=1e-6)


def test_wrong_dimension_and_no_usable_view_are_rejected() -> None:
    folded = FoldedClassifier(_classifier("trident", DI, None))
    with pytest.raises(InvalidInputError, match="image"):
        folded.predict(Views.from_nan_rows(np.zeros((1, DI + 1), np.float32), None))
    with pytest.raises(InvalidInputError, match=r"posts\[0\]"):
        folded.predict(_mixed_views(3).take(np.array([1])))  # text only, no text branch


@pytest.mark.parametrize("rows", [slice(0, 1), slice(1, 2), slice(0, 30)])
def test_features_equal_the_module_walks(rows: slice) -> None:
    clf = _classifier("trident", DI, DT)
    views = _mixed_views(30).take(rows)
    expected = clf.predict(views, with_features=True)
    probs, _, feats = FoldedClassifier(clf).predict_with_features(views)
    np.testing.assert_allclose(probs, expected.probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(feats, expected.features, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["trident", "linear"])
@pytest.mark.parametrize("rows", [slice(0, 1), slice(1, 2), slice(2, 3), slice(0, 30)])
def test_the_bf16_twin_is_close_and_leaves_the_float32_model_alone(family: str, rows: slice):
    """bf16 keeps 8 significant bits: close, not equal; the float32 model is unchanged."""
    clf = _classifier(family, DI, DT)
    views = _mixed_views(30).take(rows)
    folded = FoldedClassifier(clf)
    before, head = folded.predict(views)
    rough, rough_head = folded.coarse().predict(views)
    assert rough.dtype == np.float32 and (rough_head == head).all()
    np.testing.assert_allclose(rough, before, atol=0.03)
    np.testing.assert_array_equal(folded.predict(views)[0], before)


def test_the_bf16_twin_of_the_trained_model(tiny_model, small_splits) -> None:
    views = small_splits["test"].views
    folded = FoldedClassifier(tiny_model)
    exact, rough = folded.predict(views)[0], folded.coarse().predict(views)[0]
    assert np.abs(rough - exact).max() < 0.02
    assert (rough.argmax(1) == exact.argmax(1)).mean() > 0.98
