"""The pool: unlabeled posts' embeddings in day partitions of append-only columnar segments.

Layout under `root` (every file a raw little-endian array, so a chunk is one contiguous read):
    meta.json                            {"dims": {"image": 384, "text": 384}, "dtype": "float32"}
    days/<YYYY-MM-DD>/seg-<ns>-<pid>-<r>/  one writer's segment of posts that arrived that day (UTC)
        image.bin, text.bin              (n, dim) `dtype`; an all-NaN row = the post lacks that view
        ids.bin                          the post ids, UTF-8, concatenated (variable length)
        rows.bin                         (n,) ROW: id hash, arrival ns, end offset in ids.bin
    kept/seg-...                         labeled / queried rows saved when their day expired
    .trash-*                             a partition being deleted (removed on the next open)

Durability: `append` writes the embedding and id bytes, fsyncs them, then appends the `rows.bin`
records and fsyncs that: a row exists once its record is on disk, and its data always is. A
crash leaves at most an unreferenced tail, which readers ignore and nobody appends after
(writes go at explicit offsets, and a new process opens a new segment). Nothing is held per
pooled post in memory: readers stream chunk by chunk, and de-duplication is the ledger's job
(`store.posts.record_posts` pools only posts the ledger has not seen).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from model.data import MODALITIES, Views
from postclf_errors import InvalidInputError

ROW = np.dtype([("hash", "<u8"), ("arrived_ns", "<i8"), ("id_end", "<u8")])
DTYPES = ("float32", "float16")
SEGMENT_ROWS = 1 << 16  # rows per segment before a writer opens the next one
KEPT = "kept"
_FLOAT16_MAX = 65504.0


def id_hash(post_id: str) -> int:
    """64-bit hash of a post id (blake2b): eligibility and lookups compare these, not strings."""
    return int.from_bytes(hashlib.blake2b(post_id.encode(), digest_size=8).digest(), "little")


def id_hashes(post_ids: Sequence[str] | Iterator[str]) -> np.ndarray:
    """`(n,)` uint64 hashes of the ids, in order."""
    return np.fromiter((id_hash(p) for p in post_ids), dtype=np.uint64)


def sorted_contains(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`(k,) bool`: which `values` are in `sorted_keys` (sorted, unique). O(k log e): a large
    key set (every labeled post) is sorted once, not once per call as `np.isin` would."""
    if not sorted_keys.size:
        return np.zeros(values.shape[0], bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    return sorted_keys[at] == values


def day_of(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).date().isoformat()


@dataclass(frozen=True)
class Segment:
    """A segment's place and committed size. `path` is relative to the pool root."""

    path: str
    rows: int
    modified_ns: int  # last commit (mtime of rows.bin)

    @property
    def day(self) -> str | None:
        """Arrival day of its posts, None for the kept partition."""
        head = self.path.split("/")
        return head[1] if head[0] == "days" else None


@dataclass(frozen=True)
class ChunkRef:
    """Rows `[start, stop)` of one segment: small and picklable, so any worker can load it."""

    segment: str
    start: int
    stop: int


@dataclass(frozen=True)
class Chunk:
    hashes: np.ndarray  # (k,) uint64
    arrived_ns: np.ndarray  # (k,) int64
    views: Views


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored(
    x: np.ndarray | None, mask: np.ndarray | None, n: int, dim: int, dtype: np.dtype
) -> np.ndarray:
    """The rows as stored: `dtype`, a missing view as an all-NaN row. `(n, dim)`; `x` itself
    when it already is that (no copy: the caller only writes it out), else one copy."""
    if x is None or mask is None:
        return np.full((n, dim), np.nan, dtype)
    if mask.all() and x.dtype == dtype and x.flags.c_contiguous:
        return x
    block = np.array(x, dtype=dtype, order="C")  # a copy: the NaN rows must not touch `x`
    block[~mask] = np.nan
    return block


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _OpenSegment:
    """The segment a writer appends to; its files stay open until it rolls over."""

    def __init__(self, root: Path, rel: str, mods: list[str]) -> None:
        self.rel, self.rows, self.id_bytes = rel, 0, 0
        folder = root / rel
        folder.mkdir(parents=True)
        _fsync_dir(folder.parent)
        names = [f"{m}.bin" for m in mods] + ["ids.bin", "rows.bin"]
        self.fds = {n: os.open(folder / n, os.O_RDWR | os.O_CREAT, 0o644) for n in names}
        _fsync_dir(folder)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


class Pool:
    """Thread-safe durable appends; chunked, memory-bounded reads; day-partition retention."""

    def __init__(
        self, root: Path | str, dtype: str = "float32", segment_rows: int = SEGMENT_ROWS
    ) -> None:
        if dtype not in DTYPES:
            raise InvalidInputError(f"must be one of {DTYPES}", "pool_dtype")
        self.root = Path(root)
        (self.root / "days").mkdir(parents=True, exist_ok=True)
        self.segment_rows = segment_rows
        self._lock = threading.Lock()
        self._open: dict[str, _OpenSegment] = {}  # day -> the segment this process appends to
        meta = self._load_meta()
        self._dims: dict[str, int | None] | None = meta["dims"] if meta else None
        self.dtype = np.dtype(meta["dtype"] if meta else dtype)
        self._remove_trash()

    # -- metadata -----------------------------------------------------------------------------
    def _load_meta(self) -> dict | None:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _fix_dims(self, views: Views) -> dict[str, int | None]:
        """Fix the dims on first use (atomic: another process may win, so re-read)."""
        if self._dims is None:
            tmp = self.root / f".meta.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps({"dims": views.dims, "dtype": self.dtype.name}))
            if not (self.root / "meta.json").exists():
                os.replace(tmp, self.root / "meta.json")
                _fsync_dir(self.root)
            else:
                tmp.unlink()
            meta = self._load_meta()
            assert meta is not None
            self._dims, self.dtype = meta["dims"], np.dtype(meta["dtype"])
        return self._dims

    @property
    def dims(self) -> dict[str, int | None] | None:
        return self._dims

    def check(self, views: Views, field: str = "posts") -> None:
        """InvalidInputError unless `views` fit the pool: same widths, values in its dtype."""
        have_dims = views.dims  # a property that builds a dict: once, not per modality
        dims = self._dims or have_dims
        for name in MODALITIES:
            have = have_dims[name]
            if have is not None and have != dims[name]:
                raise InvalidInputError(f"dimension {have}, pool stores {dims[name]}", name)
            x = getattr(views, name)
            if x is not None and self.dtype == np.float16:
                big = np.abs(x).max(axis=1) > _FLOAT16_MAX if len(x) else np.zeros(0, bool)
                if big.any():
                    row = int(np.flatnonzero(big)[0])
                    raise InvalidInputError(
                        f"value beyond ±{_FLOAT16_MAX:g} (the pool stores float16)",
                        f"{field}[{row}].{name}",
                    )

    # -- writing ------------------------------------------------------------------------------
    def append(self, post_ids: Sequence[str], views: Views, arrived_ns: int | None = None) -> int:
        """Append rows durably (on disk when this returns); returns the rows written.

        No de-duplication here: callers pool only posts the ledger has not seen."""
        if len(post_ids) != len(views):
            raise InvalidInputError(f"{len(post_ids)} ids for {len(views)} rows", "post_ids")
        if not len(post_ids):
            return 0
        with self._lock:
            dims = self._fix_dims(views)  # first (another process may have fixed them)
            self.check(views)
            at = time.time_ns() if arrived_ns is None else arrived_ns
            self._write(dims, [str(p) for p in post_ids], views, at, day_of(at))
        return len(post_ids)

    def _write(
        self,
        dims: dict[str, int | None],
        ids: list[str],
        views: Views,
        at: int | np.ndarray,
        day: str,
        kept: bool = False,
    ) -> None:
        key = KEPT if kept else day
        seg = self._open.get(key)
        if seg is None or seg.rows >= self.segment_rows:
            self._roll(key, dims)
            seg = self._open[key]
        mods = [m for m in MODALITIES if dims[m] is not None]
        n = len(ids)
        for mod in mods:
            dim = dims[mod]
            assert dim is not None
            x, mask = getattr(views, mod), getattr(views, f"{mod}_mask")
            block = _stored(x, mask, n, dim, self.dtype)
            _pwrite_all(seg.fds[f"{mod}.bin"], block.data, seg.rows * dim * self.dtype.itemsize)
        encoded = [p.encode() for p in ids]
        _pwrite_all(seg.fds["ids.bin"], b"".join(encoded), seg.id_bytes)
        for name in ("ids.bin", *(f"{m}.bin" for m in mods)):
            os.fdatasync(seg.fds[name])
        rec = np.empty(n, ROW)
        rec["hash"] = id_hashes(ids)
        rec["arrived_ns"] = at
        rec["id_end"] = seg.id_bytes + np.cumsum([len(e) for e in encoded], dtype=np.uint64)
        _pwrite_all(seg.fds["rows.bin"], rec.tobytes(), seg.rows * ROW.itemsize)
        os.fdatasync(seg.fds["rows.bin"])  # the commit point
        seg.rows += n
        seg.id_bytes = int(rec["id_end"][-1])

    def _roll(self, key: str, dims: dict[str, int | None]) -> None:
        old = self._open.pop(key, None)
        if old is not None:
            old.close()
        if key != KEPT:  # a new day: yesterday's segment is done
            for day in [d for d in self._open if d not in (KEPT, key)]:
                self._open.pop(day).close()
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        rel = f"{KEPT}/{name}" if key == KEPT else f"days/{key}/{name}"
        self._open[key] = _OpenSegment(self.root, rel, [m for m in MODALITIES if dims[m]])

    def close(self) -> None:
        with self._lock:
            for seg in self._open.values():
                seg.close()
            self._open.clear()

    # -- reading ------------------------------------------------------------------------------
    def segments(self, include_kept: bool = True) -> list[Segment]:
        """Every segment with committed rows, oldest first (kept partition last)."""
        if self._dims is None:  # another process may have written the first rows since
            meta = self._load_meta()
            if meta:
                self._dims, self.dtype = meta["dims"], np.dtype(meta["dtype"])
        out: list[Segment] = []
        folders = sorted((self.root / "days").glob("*/seg-*"))
        if include_kept:
            folders += sorted((self.root / KEPT).glob("seg-*"))
        for folder in folders:
            try:
                st = (folder / "rows.bin").stat()
            except FileNotFoundError:
                continue  # being created, or its partition is being deleted
            rows = self._committed(folder, st.st_size // ROW.itemsize)
            if rows:
                rel = folder.relative_to(self.root).as_posix()
                out.append(Segment(rel, rows, st.st_mtime_ns))
        return out

    def _committed(self, folder: Path, records: int) -> int:
        """Rows whose record and data are all on disk (a torn tail is not counted)."""
        rows = records
        for mod, dim in (self._dims or {}).items():
            if dim:
                size = (folder / f"{mod}.bin").stat().st_size
                rows = min(rows, size // (dim * self.dtype.itemsize))
        return rows

    def __len__(self) -> int:
        """Rows in the pool (a post pooled twice by racing writers counts twice)."""
        return sum(s.rows for s in self.segments())

    def chunks(self, segments: Sequence[Segment], chunk_rows: int) -> list[ChunkRef]:
        return [
            ChunkRef(s.path, a, min(a + chunk_rows, s.rows))
            for s in segments
            for a in range(0, s.rows, chunk_rows)
        ]

    def _records(self, segment: str, start: int, stop: int) -> np.ndarray:
        return np.fromfile(
            self.root / segment / "rows.bin",
            dtype=ROW,
            count=stop - start,
            offset=start * ROW.itemsize,
        )

    def load(self, ref: ChunkRef) -> Chunk:
        """One chunk's hashes, arrival times and views (a fresh copy: memory is freed after)."""
        rec = self._records(ref.segment, ref.start, ref.stop)
        return Chunk(rec["hash"], rec["arrived_ns"], self._views(ref.segment, ref.start, ref.stop))

    def rows(self, segment: str, rows: np.ndarray) -> Views:
        """The views of `rows (k,)` of one segment, in that order; only those rows are read."""
        rows = np.asarray(rows, np.int64)
        stop = int(rows.max()) + 1 if rows.size else 0
        return self._views(segment, 0, stop, rows)

    def _views(self, segment: str, start: int, stop: int, rows: np.ndarray | None = None) -> Views:
        arrays: dict[str, np.ndarray | None] = {}
        for mod in MODALITIES:
            dim = (self._dims or {}).get(mod)
            if not dim:
                arrays[mod] = arrays[f"{mod}_mask"] = None
                continue
            path = self.root / segment / f"{mod}.bin"
            if rows is None:
                x = np.fromfile(
                    path, self.dtype, (stop - start) * dim, offset=start * dim * self.dtype.itemsize
                ).reshape(-1, dim)
            else:
                x = np.memmap(path, self.dtype, "r", shape=(stop, dim))[rows]
            x = x.astype(np.float32)
            # Rows are all-NaN or NaN-free (checked when written): the first column decides.
            mask = ~np.isnan(x[:, 0]) if len(x) else np.zeros(0, bool)
            x[~mask] = 0.0
            arrays[mod], arrays[f"{mod}_mask"] = x, mask
        return Views(
            arrays["image"], arrays["text"], arrays.get("image_mask"), arrays.get("text_mask")
        )

    def ids(self, segment: str, rows: np.ndarray) -> list[str]:
        """The post ids of `rows (k,)` of one segment, in that order."""
        if not len(rows):
            return []
        path = self.root / segment / "rows.bin"
        rec = np.memmap(path, ROW, "r", shape=(path.stat().st_size // ROW.itemsize,))
        ends = rec["id_end"][rows].astype(np.int64)
        starts = np.where(rows > 0, rec["id_end"][np.maximum(rows - 1, 0)].astype(np.int64), 0)
        out = []
        with open(self.root / segment / "ids.bin", "rb") as f:
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                f.seek(a)
                out.append(f.read(b - a).decode())
        return out

    def get(self, post_ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, Views]:
        """Rows for the requested ids that the pool holds: `(found_ids (k,), Views)` in the
        order requested, each id once (unknown ids are left out). Reads only matching rows."""
        want = list(dict.fromkeys(str(p) for p in post_ids))
        want_set = set(want)
        wanted = np.unique(id_hashes(want))
        found: dict[str, tuple[int, int]] = {}  # id -> (part, row in part), first copy wins
        parts: list[Views] = []
        for seg in self.segments():
            rec = self._records(seg.path, 0, seg.rows)
            hit = np.flatnonzero(np.isin(rec["hash"], wanted))
            # ids are compared too, so a hash collision is no hit
            new = [
                (pid, row)
                for pid, row in zip(self.ids(seg.path, hit), hit.tolist(), strict=True)
                if pid not in found and pid in want_set
            ]
            if not new:
                continue
            for k, (pid, _) in enumerate(new):
                found[pid] = (len(parts), k)
            rows = np.asarray([r for _, r in new], dtype=np.int64)
            parts.append(self._views(seg.path, 0, seg.rows, rows=rows))
        requested = [p for p in want if p in found]
        if not requested:
            return np.empty(0, str), _empty_views(self._dims)
        offsets = np.cumsum([0] + [len(v) for v in parts])
        order = np.asarray([offsets[found[p][0]] + found[p][1] for p in requested], np.int64)
        return np.asarray(requested, dtype=str), Views.concat(parts).take(order)

    # -- retention ----------------------------------------------------------------------------
    def days(self) -> list[str]:
        return sorted(p.name for p in (self.root / "days").iterdir() if p.is_dir())

    def expire(self, before: date, keep: np.ndarray) -> int:
        """Delete every day partition older than `before`; rows whose hash is in `keep` (sorted
        uint64: labeled or queried posts) are first copied to the kept partition. Returns the
        rows deleted. A partition is renamed away (atomic) before it is removed, so readers see
        all of it or none, and a crash mid-delete is finished by the next open."""
        expired = 0
        old = [d for d in self.days() if d < before.isoformat()]
        segments = [s for s in self.segments(include_kept=False) if s.day in old]
        for day in old:
            folder = self.root / "days" / day
            for seg in [s for s in segments if s.day == day]:
                expired += seg.rows - self._keep_rows(seg, keep)
            with self._lock:
                opened = self._open.pop(day, None)
                if opened is not None:
                    opened.close()
            trash = self.root / f".trash-{day}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, trash)
            _fsync_dir(self.root / "days")
            shutil.rmtree(trash)
        return expired

    def _keep_rows(self, seg: Segment, keep: np.ndarray) -> int:
        """Copy the rows of `seg` whose hash is in `keep` into the kept partition (durably)."""
        rec = self._records(seg.path, 0, seg.rows)
        hit = np.flatnonzero(sorted_contains(keep, rec["hash"]))
        if not hit.size or self._dims is None:
            return int(hit.size)
        ids = self.ids(seg.path, hit)
        views = self._views(seg.path, 0, seg.rows, rows=hit)
        with self._lock:  # original arrival times are kept, row by row
            self._write(self._dims, ids, views, rec["arrived_ns"][hit], "", True)
        return int(hit.size)

    def _remove_trash(self) -> None:
        for trash in self.root.glob(".trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
        for tmp in self.root.glob(".meta.*.tmp"):
            tmp.unlink(missing_ok=True)


def _empty_views(dims: dict[str, int | None] | None = None) -> Views:
    """Zero rows with the pool's dims (a 0-wide text view when the pool has never been used)."""
    dims = dims or {"image": None, "text": 0}
    arrays = {m: None if d is None else np.empty((0, d), np.float32) for m, d in dims.items()}
    return Views.from_nan_rows(arrays["image"], arrays["text"])
