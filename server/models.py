"""The served model: loaded off the request path, swapped atomically by replacing one reference.

A watcher thread polls `registry.current_version()` every `poll_s` seconds (and on `refresh()`,
e.g. after an admin retrain); a new version is loaded fully before the reference is replaced,
so a batch that grabbed `holder.current` keeps using exactly that model object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from model.classifier import Classifier
from model.folded import FoldedClassifier
from model.registry import ModelRegistry
from model.scripted import ScriptedClassifier
from postclf_errors import ModelUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dims:
    """Embedding widths the served model expects (None = the model has no such branch)."""

    image: int | None
    text: int | None


@dataclass(frozen=True)
class ServedModel:
    """One loaded version; never mutated after load. Classify runs `folded`, the same
    predictions as `clf.predict` at a fraction of the cost (model/folded.py), and for big
    batches `scripted`, the same folded layers as one graph that runs without the GIL
    (model/scripted.py)."""

    version: str
    clf: Classifier
    folded: FoldedClassifier
    scripted: ScriptedClassifier | None  # None: TorchScript failed; every pass runs `folded`

    @classmethod
    def of(cls, version: str, clf: Classifier) -> ServedModel:
        folded = FoldedClassifier(clf)
        try:  # TorchScript is deprecated upstream (torch 2.13 warns); serving must not need it
            scripted: ScriptedClassifier | None = ScriptedClassifier(folded)
        except Exception:
            log.exception("event=scripting_failed version=%s (big batches run inline)", version)
            scripted = None
        return cls(version, clf, folded, scripted)

    @property
    def dims(self) -> Dims:
        cfg = self.clf.net_config
        return Dims(image=cfg.image_dim, text=cfg.text_dim)

    @property
    def classes(self) -> list[str]:
        return self.clf.classes


class ModelHolder:
    """Holds the current `ServedModel` (or None) and keeps it in step with the registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        poll_s: float,
        on_change: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.registry = registry
        self.poll_s = poll_s
        self.on_change = on_change
        self._current: ServedModel | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one loader at a time (watcher vs refresh())
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)

    @property
    def current(self) -> ServedModel | None:
        return self._current  # a single reference read: atomic under the GIL

    def require(self) -> ServedModel:
        model = self._current
        if model is None:
            raise ModelUnavailableError("no model is loaded yet; try again later")
        return model

    def start(self) -> ModelHolder:
        """Load the current version now (if any), then keep watching in the background."""
        try:
            self.refresh()
        except Exception:
            log.exception("event=model_load_failed")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poke(self) -> None:
        """Ask the watcher to check the registry now (non-blocking)."""
        self._wake.set()

    def refresh(self) -> ServedModel | None:
        """Load the registry's current version if it differs from the served one (blocking)."""
        with self._lock:
            version = self.registry.current_version()
            served = self._current
            if version is None or (served is not None and served.version == version):
                return served
            clf = self.registry.load(version)
            clf.net.eval()
            model = ServedModel.of(version, clf)
            self._current = model  # the swap: one reference replaced
            if self.on_change is not None:  # under the lock: observers see versions in order
                self.on_change(model)
        log.info("event=model_loaded version=%s previous=%s", version, served and served.version)
        return model

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception:
                log.exception("event=model_load_failed")
