"""The pool: append-only segments of contiguous float32 `.npy` embeddings, streamed on read.

Layout under `root`:
    meta.json                          {"dims": {"image": 384, "text": 384}} (None = no such view)
    segments/seg-<ns>-<pid>-<rand>/    ids.npy (n,) str, image.npy / text.npy (n, dim) float32,
                                       an all-NaN row where the post lacks that view
A segment is written in a temporary folder and renamed into place, so readers never see a torn
one. Several processes may append (segment names are unique); `read` de-duplicates by post_id.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data import MODALITIES, Views
from postclf_errors import InvalidInputError


@dataclass
class _Segment:
    name: str
    ids: np.ndarray  # (n,) str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


class Pool:
    """Buffered, thread-safe appends; `read()` returns every pooled post once (first wins)."""

    def __init__(self, root: Path | str, flush_rows: int = 4096) -> None:
        self.root = Path(root)
        self.seg_dir = self.root / "segments"
        self.seg_dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []
        self._ids: set[str] = set()
        self._has_dupes = False
        self._buf_ids: list[str] = []
        self._buf: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
        self._dims: dict[str, int | None] | None = self._load_dims()
        self._refresh()

    # -- metadata -----------------------------------------------------------------------------
    def _load_dims(self) -> dict[str, int | None] | None:
        path = self.root / "meta.json"
        return json.loads(path.read_text())["dims"] if path.exists() else None

    def _check_dims(self, views: Views) -> None:
        """Fix the dims on first use; afterwards a different width is an InvalidInputError."""
        got = views.dims
        if self._dims is None:
            tmp = self.root / f".meta.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps({"dims": got}))
            os.replace(tmp, self.root / "meta.json")
            self._dims = self._load_dims()  # another process may have won: re-read
        dims = self._dims or got
        for name in MODALITIES:
            want, have = dims[name], got[name]
            if have is not None and have != want:
                raise InvalidInputError(f"dimension {have}, pool stores {want}", name)

    @property
    def dims(self) -> dict[str, int | None] | None:
        return self._dims

    # -- segments on disk ---------------------------------------------------------------------
    def _refresh(self) -> None:
        """Pick up segments written since the last look (by this or another process)."""
        with self._lock:
            known = {s.name for s in self._segments}
            names = sorted(p.name for p in self.seg_dir.iterdir() if p.name.startswith("seg-"))
            for name in names:
                if name in known:
                    continue
                ids = np.load(self.seg_dir / name / "ids.npy", allow_pickle=False)
                before = len(self._ids)
                self._ids.update(ids.tolist())
                self._has_dupes |= len(self._ids) - before != len(ids)
                self._segments.append(_Segment(name, ids))
            self._segments.sort(key=lambda s: s.name)

    def _write_segment(self, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.root / f".tmp-{name}"
        tmp.mkdir()
        _save(tmp / "ids.npy", ids)
        for mod, x in arrays.items():
            _save(tmp / f"{mod}.npy", x)
        os.rename(tmp, self.seg_dir / name)
        _fsync_dir(self.seg_dir)
        self._segments.append(_Segment(name, ids))

    # -- public API ---------------------------------------------------------------------------
    def append(self, post_ids: np.ndarray | list[str], views: Views) -> int:
        """Buffer posts not already pooled (first occurrence wins); returns how many were new.

        Flushes a segment once `flush_rows` rows are buffered.
        """
        ids = np.asarray(post_ids, dtype=str)
        if ids.shape != (len(views),):
            raise InvalidInputError(f"{ids.shape} ids for {len(views)} rows", "post_ids")
        rows = views.to_nan_rows()
        with self._lock:
            self._check_dims(views)
            keep = []
            for i, pid in enumerate(ids.tolist()):
                if pid not in self._ids:
                    self._ids.add(pid)
                    keep.append(i)
            if not keep:
                return 0
            idx = np.asarray(keep)
            self._buf_ids.extend(ids[idx].tolist())
            for mod in MODALITIES:
                dim = self._dims[mod] if self._dims else None
                if dim is None:
                    continue
                x = rows[mod]
                part = x[idx] if x is not None else np.full((len(idx), dim), np.nan, np.float32)
                self._buf[mod].append(np.ascontiguousarray(part, dtype=np.float32))
            if len(self._buf_ids) >= self.flush_rows:
                self._flush_locked()
            return len(keep)

    def flush(self) -> None:
        """Write buffered rows as one segment (no-op when nothing is buffered)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buf_ids:
            return
        ids = np.asarray(self._buf_ids, dtype=str)
        arrays = {m: np.concatenate(parts) for m, parts in self._buf.items() if parts}
        self._write_segment(ids, arrays)
        self._buf_ids = []
        self._buf = {m: [] for m in MODALITIES}

    def __len__(self) -> int:
        """Distinct pooled posts, buffered ones included (segments seen so far)."""
        return len(self._ids)

    def __contains__(self, post_id: object) -> bool:
        return post_id in self._ids

    def read(self) -> tuple[np.ndarray, Views]:
        """`(post_ids (n,), Views)` of every pooled post, once each, in arrival order.

        Segments are memory-mapped and copied into one preallocated array per view; the
        missing-view mask comes from the first column (a row is all-NaN or has no NaN).
        """
        with self._lock:
            self._refresh()
            segments = list(self._segments)
            buf_ids = list(self._buf_ids)
            buf = {m: list(p) for m, p in self._buf.items()}
            dims, dupes = self._dims, self._has_dupes
        if dims is None:
            raise InvalidInputError("the pool is empty", "pool")
        ids = np.concatenate([s.ids for s in segments] + [np.asarray(buf_ids, dtype=str)])
        sources = [(self.seg_dir / s.name, len(s.ids)) for s in segments]
        views = self._assemble(sources, buf, dims, len(ids))
        if dupes:
            first = _first_occurrences(ids)
            return ids[first], views.take(first)
        return ids, views

    def get(self, post_ids: np.ndarray | list[str]) -> tuple[np.ndarray, Views]:
        """Rows for the requested ids that the pool holds: `(found_ids (k,), Views)`, in the
        order requested, each id once (unknown ids are left out). Reads only matching rows."""
        want = np.unique(np.asarray(post_ids, dtype=str))
        with self._lock:
            self._refresh()
            segments, dims = list(self._segments), self._dims
            buf_ids = np.asarray(self._buf_ids, dtype=str)
            buf = {m: np.concatenate(p) if p else None for m, p in self._buf.items()}
        if dims is None:
            return np.empty(0, str), _empty_views()
        found_ids: list[np.ndarray] = []
        found: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES if dims[m] is not None}
        for seg in segments:
            hit = np.flatnonzero(np.isin(seg.ids, want))  # (k,)
            if hit.size:
                found_ids.append(seg.ids[hit])
                for mod in found:
                    found[mod].append(
                        np.load(self.seg_dir / seg.name / f"{mod}.npy", mmap_mode="r")[hit]
                    )
        hit = np.flatnonzero(np.isin(buf_ids, want))
        if hit.size:
            found_ids.append(buf_ids[hit])
            for mod in found:
                part = buf[mod]
                if part is not None:
                    found[mod].append(part[hit])
        if not found_ids:
            return np.empty(0, str), _empty_views(dims)
        ids = np.concatenate(found_ids)
        first: dict[str, int] = {}
        for i, pid in enumerate(ids.tolist()):
            first.setdefault(pid, i)
        requested = [
            p for p in dict.fromkeys(np.asarray(post_ids, dtype=str).tolist()) if p in first
        ]
        rows = np.asarray([first[p] for p in requested], dtype=np.int64)
        arrays = {m: np.concatenate(found[m])[rows] if m in found else None for m in MODALITIES}
        return np.asarray(requested, dtype=str), Views.from_nan_rows(
            arrays["image"], arrays["text"]
        )

    @staticmethod
    def _assemble(
        sources: list[tuple[Path, int]],
        buf: dict[str, list[np.ndarray]],
        dims: dict[str, int | None],
        n: int,
    ) -> Views:
        arrays: dict[str, np.ndarray | None] = {}
        for mod in MODALITIES:
            dim = dims[mod]
            if dim is None:
                arrays[mod] = arrays[f"{mod}_mask"] = None
                continue
            out = np.empty((n, dim), np.float32)  # (n, dim)
            at = 0
            for folder, rows in sources:
                out[at : at + rows] = np.load(folder / f"{mod}.npy", mmap_mode="r")
                at += rows
            for part in buf[mod]:
                out[at : at + len(part)] = part
                at += len(part)
            mask = ~np.isnan(out[:, 0]) if n else np.zeros(0, bool)  # (n,)
            out[~mask] = 0.0
            arrays[mod], arrays[f"{mod}_mask"] = out, mask
        return Views(arrays["image"], arrays["text"], arrays["image_mask"], arrays["text_mask"])


def _empty_views(dims: dict[str, int | None] | None = None) -> Views:
    """Zero rows with the pool's dims (a 0-wide text view when the pool has never been used)."""
    dims = dims or {"image": None, "text": 0}
    arrays = {m: None if d is None else np.empty((0, d), np.float32) for m, d in dims.items()}
    return Views.from_nan_rows(arrays["image"], arrays["text"])


def _first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Sorted row indices `(k,)` of the first occurrence of each distinct id."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)
