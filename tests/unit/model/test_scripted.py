"""The scripted forward pass (one GIL-free graph) equals the folded numpy path row for row."""

import numpy as np
import pytest

from model.data import Views
from model.folded import FoldedClassifier
from model.scripted import ScriptedClassifier
from postclf_errors import InvalidInputError
from tests.unit.model.test_folded import DI, DT, _classifier, _mixed_views


def _both(folded: FoldedClassifier, views: Views) -> None:
    expected, head = folded.predict(views)
    probs, scripted_head = ScriptedClassifier(folded).predict(views)
    assert probs.dtype == np.float32 and (scripted_head == head).all()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["trident", "linear"])
@pytest.mark.parametrize(
    "rows", [slice(0, 1), slice(1, 2), slice(2, 3), slice(0, 30), [0, 3, 6]], ids=str
)
def test_every_head_and_a_mix_equal_the_folded_path(family: str, rows: object) -> None:
    """Single fused / text-only / image-only rows, all three interleaved, and all-fused rows
    (the graph's path without row selection)."""
    views = _mixed_views(30).take(np.arange(30)[rows])  # type: ignore[index]
    _both(FoldedClassifier(_classifier(family, DI, DT)), views)


@pytest.mark.parametrize("family", ["trident", "linear"])
@pytest.mark.parametrize("image_dim, text_dim", [(DI, None), (None, DT)])
def test_one_view_models(family: str, image_dim: int | None, text_dim: int | None) -> None:
    views = _mixed_views(9, image=image_dim is not None, text=text_dim is not None)
    _both(FoldedClassifier(_classifier(family, image_dim, text_dim)), views)


def test_a_view_the_model_lacks_is_ignored() -> None:
    _both(FoldedClassifier(_classifier("trident", DI, None)), _mixed_views(6).take([0, 2]))


def test_trained_model_matches(tiny_model, small_splits) -> None:  # type: ignore[no-untyped-def]
    _both(FoldedClassifier(tiny_model), small_splits["test"].views)


def test_bad_input_is_rejected_by_name_before_the_graph_runs() -> None:
    scripted = ScriptedClassifier(FoldedClassifier(_classifier("trident", DI, None)))
    with pytest.raises(InvalidInputError, match="image"):
        scripted.predict(Views.from_nan_rows(np.zeros((1, DI + 1), np.float32), None))
    with pytest.raises(InvalidInputError, match=r"posts\[0\]"):
        scripted.predict(_mixed_views(3).take(np.array([1])))  # text only, no text branch
