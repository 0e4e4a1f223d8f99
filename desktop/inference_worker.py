"""The one long-lived inference worker: a thread that owns a queue of paths and shares one classifier.

The worker looks each file up in the result store first (same path, size and mtime: no work to redo),
classifies the rest in batches, stores every result as soon as it exists (so a crash loses at most the
batch in flight) and reports them to the GUI thread through a queued Qt signal. One bad file gives an
error result for that file; nothing stops the loop except `stop()`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

from desktop.threads import stop_thread
from engine.preprocess import is_image_path
from engine.results import ImageResult

if TYPE_CHECKING:
    from engine.model import BlurClassifier
    from engine.store import ResultStore

#: Folder names never descended into when a dropped folder is expanded.
SKIPPED_DIRS = frozenset({"_blurflag"})


@dataclass(frozen=True)
class Outcome:
    """One file's result as the worker hands it to the GUI."""

    result: ImageResult
    size: int
    mtime_ns: int
    classified_at: float
    cached: bool  # True: taken from the result store, no inference was run


@dataclass(frozen=True)
class _Item:
    path: str
    explicit: bool  # dropped or opened by the user: report even a missing file; expand folders


def expand_folder(folder: str | Path, recursive: bool = True) -> list[str]:
    """Image files in a folder (sorted), skipping hidden entries and BlurFlag's own subfolders."""
    found: list[str] = []
    root = Path(folder)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        if not recursive:
            dirnames[:] = []
        found.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and is_image_path(f)
        )
    return found


class InferenceWorker(QObject):
    """Owns the work queue and its thread; signals arrive in the thread that owns this object."""

    results_ready = Signal(list)  # list[Outcome], in processing order
    queue_changed = Signal(int)  # paths still waiting (0: idle)
    error_occurred = Signal(str)  # a problem that is not one file's (e.g. the database)

    def __init__(
        self,
        classifier: BlurClassifier | None,
        store: ResultStore | None,
        batch_size: int = 8,
        decode_workers: int | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._classifier = classifier
        self._store = store
        self._batch_size = max(1, batch_size)
        # Decode threads per batch (read at each batch): one per core, at most 4. Measured with bench/desktop.py on
        # 2 cores: 24 MP backlog 23.7-24.1 img/s with 2 threads against 13.3-13.9 with 1, GUI timer p99 8 ms late.
        self.decode_workers = decode_workers or max(1, min(4, os.cpu_count() or 1))
        self._queue: deque[_Item] = deque()
        self._priority: deque[_Item] = deque()
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._paused = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.classified_count = 0  # files actually run through the model (not cached), for tests and stats

    # -- control (GUI thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="blurflag-inference", daemon=False)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the batch in flight and join the thread; True when it has ended."""
        thread, self._thread = self._thread, None
        return stop_thread(self._stop, self._cond, thread, timeout)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, paths: Iterable[str | Path], explicit: bool = False) -> int:
        """Queue paths; explicit ones (dropped or opened) jump the queue. Returns how many were added."""
        added = 0
        with self._cond:
            for raw in paths:
                path = os.path.abspath(os.fspath(raw))
                if path in self._pending:
                    if explicit:  # already waiting: move it to the front
                        self._queue = deque(i for i in self._queue if i.path != path)
                        self._priority = deque(i for i in self._priority if i.path != path)
                        self._priority.append(_Item(path, True))
                    continue
                self._pending.add(path)
                (self._priority if explicit else self._queue).append(_Item(path, explicit))
                added += 1
            self._cond.notify_all()
        if added:
            self.queue_changed.emit(self.pending_count())
        return added

    def discard(self, paths: Iterable[str]) -> None:
        """Forget queued paths (deleted files, removed folders)."""
        drop = {os.path.abspath(p) for p in paths}
        with self._cond:
            self._queue = deque(i for i in self._queue if i.path not in drop)
            self._priority = deque(i for i in self._priority if i.path not in drop)
            self._pending -= drop
        self.queue_changed.emit(self.pending_count())

    def clear(self) -> None:
        """Forget everything queued (not the batch in flight)."""
        with self._cond:
            self._queue.clear()
            self._priority.clear()
            self._pending.clear()
        self.queue_changed.emit(0)

    def set_paused(self, paused: bool) -> None:
        """While paused only explicit (dropped) paths are processed; queued ones wait."""
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def set_classifier(self, classifier: BlurClassifier | None, store: ResultStore | None) -> None:
        """Swap the model and its store; takes effect from the next batch."""
        with self._cond:
            self._classifier = classifier
            self._store = store

    def pending_count(self) -> int:
        """Paths waiting, plus the batch in flight."""
        with self._cond:
            return len(self._pending)

    def is_idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        with self._cond:
            return not self._pending and not self._busy

    # -- worker thread --------------------------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._stop.is_set():
                source = self._priority if self._priority else (None if self._paused else self._queue)
                if source:
                    batch = [source.popleft() for _ in range(min(self._batch_size, len(source)))]
                    self._busy = True
                    return batch
                self._cond.wait()
            return None

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                outcomes = self._process(batch)
            except Exception as exc:  # never let one batch kill the worker  # noqa: BLE001
                outcomes = [_error_outcome(i.path, f"unexpected error: {type(exc).__name__}: {exc}") for i in batch]
            with self._cond:
                for item in batch:
                    self._pending.discard(item.path)
                self._busy = False
                left = len(self._pending)
            if self._stop.is_set():
                return  # the receiver may be gone; results are in the store already
            if outcomes:
                self.results_ready.emit(outcomes)
            self.queue_changed.emit(left)

    def _process(self, batch: list[_Item]) -> list[Outcome]:
        with self._cond:
            classifier, store = self._classifier, self._store
        outcomes: list[Outcome] = []
        todo: list[tuple[str, int, int]] = []
        for item in batch:
            if item.explicit and os.path.isdir(item.path):
                self._expand(item.path)
                continue
            try:
                st = os.stat(item.path)
            except OSError as exc:
                if item.explicit:
                    outcomes.append(_error_outcome(item.path, "file not found" if isinstance(exc, FileNotFoundError)
                                                   else f"cannot access file: {exc.strerror or exc}"))
                continue  # a watched file that vanished: its deletion event updates the view
            size, mtime_ns = st.st_size, st.st_mtime_ns
            cached = self._lookup(store, item.path, size, mtime_ns)
            if cached is not None:
                outcomes.append(Outcome(cached, size, mtime_ns, time.time(), True))
            else:
                todo.append((item.path, size, mtime_ns))
        if not todo:
            return outcomes
        if classifier is None:
            return outcomes + [_error_outcome(p, "no model loaded", s, m) for p, s, m in todo]
        results = classifier.classify_paths(
            [p for p, _, _ in todo], None, workers=self.decode_workers, batch_size=self._batch_size
        )
        fresh: list[tuple[ImageResult, int, int]] = []
        for (_path, size, mtime_ns), result in zip(todo, results, strict=True):
            self.classified_count += 1
            fresh.append((result, size, mtime_ns))
            outcomes.append(Outcome(result, size, mtime_ns, time.time(), False))
        if store is not None and fresh:
            try:
                store.put_many(fresh)  # one transaction per batch; a crash loses at most this batch
            except Exception as exc:  # the results still reach the view  # noqa: BLE001
                self.error_occurred.emit(f"cannot save {len(fresh)} results: {exc}")
        return outcomes

    def _lookup(self, store: ResultStore | None, path: str, size: int, mtime_ns: int) -> ImageResult | None:
        if store is None:
            return None
        try:
            return store.get(path, size, mtime_ns)
        except Exception as exc:  # noqa: BLE001
            self.error_occurred.emit(f"cannot read the result database: {exc}")
            return None

    def _expand(self, folder: str) -> None:
        files = expand_folder(folder)
        with self._cond:
            new = [f for f in files if f not in self._pending]
            self._pending.update(new)
            self._priority.extendleft(_Item(f, True) for f in reversed(new))
        if not files:
            self.error_occurred.emit(f"no images found in {folder}")


def _error_outcome(path: str, message: str, size: int = 0, mtime_ns: int = 0) -> Outcome:
    return Outcome(ImageResult(path, None, message, None), size, mtime_ns, time.time(), False)
