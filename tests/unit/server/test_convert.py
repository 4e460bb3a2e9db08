"""Proto → Views without a network: both encodings agree, a missing view is a mask, and bad
input names its field."""

from __future__ import annotations

import numpy as np
import pytest

from client.encode import arrays_to_posts
from postclf.v1 import postclf_pb2 as pb
from postclf_errors import InvalidInputError, TooLargeError
from server.convert import posts_to_views
from server.models import Dims

DIMS = Dims(image=3, text=2)


def arrays(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(n, 3)).astype(np.float32)
    txt = rng.normal(size=(n, 2)).astype(np.float32)
    img[1] = np.nan  # post 1 has no image
    return img, txt


@pytest.mark.parametrize("as_bytes", [True, False])
def test_round_trip_with_a_missing_view(as_bytes: bool) -> None:
    img, txt = arrays()
    ids, views = posts_to_views(arrays_to_posts(["a", "b", "c", "d"], img, txt, as_bytes), DIMS, 10)
    assert ids.tolist() == ["a", "b", "c", "d"]
    assert views.image_mask.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(views.image[[0, 2, 3]], img[[0, 2, 3]])
    np.testing.assert_array_equal(views.image[1], np.zeros(3, np.float32))  # masked, not data
    np.testing.assert_array_equal(views.text, txt)


def post(
    pid: str = "p", image: list[float] | None = None, text: list[float] | None = None
) -> pb.Post:
    img = None if image is None else pb.Embedding(values=image)
    txt = None if text is None else pb.Embedding(values=text)
    return pb.Post(post_id=pid, image=img, text=txt)


@pytest.mark.parametrize(
    ("posts", "field"),
    [
        ([post("a", [1, 2, 3]), post("b", [1, 2])], "posts[1].image"),  # wrong dimension
        ([post("a", text=[1, float("nan")])], "posts[0].text"),  # NaN
        ([post("a", [1, 2, 3]), post("b")], "posts[1]"),  # no embedding at all
        ([post("a", [1, 2, 3]), post("a", [1, 2, 3])], "posts[1].post_id"),  # duplicate id
        ([post("", [1, 2, 3])], "posts[0].post_id"),  # empty id
        ([], "posts"),
    ],
)
def test_bad_input_names_the_field(posts: list[pb.Post], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        posts_to_views(posts, DIMS, 10)
    assert err.value.field == field


def test_values_past_max_abs_and_too_many_posts() -> None:
    with pytest.raises(InvalidInputError) as err:
        posts_to_views([post("a", [1, 2, 1e9])], DIMS, 10, max_abs=1e6)
    assert err.value.field == "posts[0].image"
    with pytest.raises(TooLargeError):
        posts_to_views([post(str(i), [1, 2, 3]) for i in range(3)], DIMS, 2)


def test_a_view_the_model_lacks_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as err:
        posts_to_views([post("a", [1, 2, 3], [1, 2])], Dims(image=3, text=None), 10)
    assert err.value.field == "posts[0].text"
