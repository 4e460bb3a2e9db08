"""Client side: NaN-row numpy arrays (the data sets' form) → `Post` messages (bytes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from postclf.v1 import postclf_pb2 as pb

F32LE = np.dtype("<f4")


def embedding_to_proto(row: np.ndarray | None, as_bytes: bool = True) -> pb.Embedding | None:
    """Client side: a `(dim,)` row → Embedding (None for a missing, all-NaN or absent row)."""
    if row is None or np.isnan(row).all():
        return None
    if as_bytes:
        return pb.Embedding(f32le=np.ascontiguousarray(row, dtype=F32LE).tobytes())
    return pb.Embedding(values=row.astype(np.float32).tolist())


def arrays_to_posts(
    post_ids: Sequence[str] | np.ndarray,
    image: np.ndarray | None,
    text: np.ndarray | None,
    as_bytes: bool = True,
) -> list[pb.Post]:
    """Client side: NaN-row arrays (the data sets' form) → Post messages."""
    posts = []
    for i, pid in enumerate(post_ids):
        img = embedding_to_proto(None if image is None else image[i], as_bytes)
        txt = embedding_to_proto(None if text is None else text[i], as_bytes)
        posts.append(pb.Post(post_id=str(pid), image=img, text=txt))
    return posts
