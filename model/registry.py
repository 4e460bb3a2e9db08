"""Model registry: one folder per version (weights + metadata) and an atomic CURRENT pointer.

Layout under `root`:
    versions/v0001/model.pt      checkpoint (rebuilds itself, see Classifier.save)
    versions/v0001/meta.json     classes, dims, metrics, parent, label count, created_at
    CURRENT                      the promoted version's name, replaced by write+fsync+rename
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.classifier import Classifier
from postclf_errors import ModelUnavailableError, NotFoundError

VERSION_RE = re.compile(r"v[0-9]{4,9}")  # every name `_claim_version_dir` hands out


def _checked(version: str) -> str:
    """A version name is never a path: anything but `vNNNN` is unknown (NotFoundError)."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise NotFoundError(f"model version {str(version)[:40]!r} does not exist")
    return version


@dataclass(frozen=True)
class VersionInfo:
    version: str
    meta: dict[str, Any]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def _claim_version_dir(self) -> tuple[str, Path]:
        """Next free `vNNNN`; `mkdir` is atomic, so concurrent writers never share a number."""
        existing = [
            int(p.name[1:])
            for p in self.versions_dir.glob("v[0-9]*")
            if p.is_dir() and VERSION_RE.fullmatch(p.name)
        ]
        n = max(existing, default=0) + 1
        while True:
            name = f"v{n:04d}"
            try:
                (self.versions_dir / name).mkdir()
                return name, self.versions_dir / name
            except FileExistsError:
                n += 1

    def save(
        self, clf: Classifier, metrics: dict[str, float] | None = None, parent: str | None = None
    ) -> str:
        """Store a candidate version (not promoted) and return its name."""
        name, folder = self._claim_version_dir()
        cfg = clf.net_config
        meta = {
            "version": name,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parent": parent,
            "classes": clf.classes,
            "image_dim": cfg.image_dim,
            "text_dim": cfg.text_dim,
            "family": cfg.family,
            "label_count": clf.meta.get("label_count"),
            "metrics": metrics or {},
            "train": clf.meta.get("train", {}),
        }
        clf.save(folder / "model.pt", extra_meta={"version": name})
        _write_atomic(folder / "meta.json", json.dumps(meta, indent=2).encode())
        return name

    def promote(self, version: str) -> None:
        """Make `version` current: readers see the old or the new pointer, never a torn one."""
        if not (self.versions_dir / _checked(version) / "model.pt").exists():
            raise NotFoundError(f"model version {version!r} does not exist")
        _write_atomic(self.root / "CURRENT", version.encode())

    def current_version(self) -> str | None:
        try:
            return (self.root / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def load(self, version: str | None = None) -> Classifier:
        """Load `version` (default: the current one) with its version name in `meta`."""
        version = version or self.current_version()
        if version is None:
            raise ModelUnavailableError("no model has been promoted yet")
        path = self.versions_dir / _checked(version) / "model.pt"
        if not path.exists():
            raise NotFoundError(f"model version {version!r} does not exist")
        clf = Classifier.load(path)
        clf.meta["version"] = version
        return clf

    def info(self, version: str) -> VersionInfo:
        path = self.versions_dir / _checked(version) / "meta.json"
        if not path.exists():
            raise NotFoundError(f"model version {version!r} does not exist")
        return VersionInfo(version, json.loads(path.read_text()))

    def versions(self) -> list[str]:
        return sorted(
            p.name for p in self.versions_dir.glob("v[0-9]*") if (p / "meta.json").exists()
        )
