"""WatchBridge: the Qt adapter of `engine.watcher.FolderWatcher`.

The watcher calls back from its own threads; the bridge re-emits each event as a Qt signal, which
Qt queues to the thread that owns the bridge (the GUI thread). The backlog scan runs in a short-lived
thread so that a large or slow (network) folder never blocks the window.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

if TYPE_CHECKING:
    from engine.watcher import FolderWatcher, WatchEvent


class WatchBridge(QObject):
    """Starts, pauses and stops one FolderWatcher over a set of folders."""

    file_ready = Signal(str)  # a new or changed image has settled
    file_moved = Signal(str, str)  # old path, new path
    file_deleted = Signal(str)
    backlog_found = Signal(list)  # list[str]: images already in the folders when watching started
    watching_changed = Signal(bool)
    paused_changed = Signal(bool)
    error_occurred = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._watcher: FolderWatcher | None = None
        self._scan_thread: threading.Thread | None = None
        self._folders: tuple[str, ...] = ()
        self._cancel = threading.Event()

    @property
    def watching(self) -> bool:
        """Whether a watcher is running."""
        return self._watcher is not None

    @property
    def paused(self) -> bool:
        """Whether the running watcher is paused."""
        return self._watcher is not None and self._watcher.paused

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders being watched."""
        return self._folders

    def start(
        self,
        folders: Sequence[str],
        recursive: bool = False,
        use_polling: bool = False,
        poll_interval: float = 2.0,
        settle_seconds: float = 1.0,
        ignore_dirs: Sequence[str] = ("_blurflag",),
    ) -> bool:
        """(Re)start watching the existing folders and scan their backlog; False if none can be watched."""
        from engine.watcher import FolderWatcher

        self.stop()
        usable = [str(Path(f)) for f in folders if Path(f).is_dir()]
        for missing in sorted(set(folders) - set(usable)):
            self.error_occurred.emit(f"folder not found, not watched: {missing}")
        if not usable:
            return False
        try:
            watcher = FolderWatcher(
                usable,
                recursive=recursive,
                on_event=self._on_event,
                settle_seconds=settle_seconds,
                use_polling=use_polling,
                poll_interval=poll_interval,
                ignore_dirs=tuple(ignore_dirs),
            )
        except (OSError, ValueError) as exc:
            self.error_occurred.emit(f"cannot watch {', '.join(usable)}: {exc}")
            return False
        self._watcher = watcher
        self._folders = tuple(usable)
        self._cancel.clear()
        self._scan_thread = threading.Thread(
            target=self._scan_and_start, args=(watcher,), name="blurflag-backlog-scan", daemon=False
        )
        self._scan_thread.start()
        self.watching_changed.emit(True)
        return True

    def pause(self) -> None:
        """Hold events (queued by the watcher, delivered on resume)."""
        if self._watcher is not None and not self._watcher.paused:
            self._watcher.pause()
            self.paused_changed.emit(True)

    def resume(self) -> None:
        """Deliver held events and go on watching."""
        if self._watcher is not None and self._watcher.paused:
            self._watcher.resume()
            self.paused_changed.emit(False)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watcher and join every thread; idempotent."""
        watcher, self._watcher = self._watcher, None
        self._cancel.set()
        scan, self._scan_thread = self._scan_thread, None
        if scan is not None:
            scan.join(timeout)
        if watcher is not None:
            watcher.stop(timeout)
            self._folders = ()
            self.watching_changed.emit(False)

    def _scan_and_start(self, watcher: FolderWatcher) -> None:
        # Scan first: scanned files count as reported, so the watcher's first rescan does not repeat them.
        try:
            backlog = watcher.scan_existing()
        except Exception as exc:  # noqa: BLE001
            self.error_occurred.emit(f"cannot list the watched folders: {exc}")
            backlog = []
        if self._cancel.is_set():
            return
        self.backlog_found.emit(list(backlog))
        try:
            watcher.start()
        except Exception as exc:  # WatcherError, or OSError from watchdog  # noqa: BLE001
            self.error_occurred.emit(str(exc))

    def _on_event(self, event: WatchEvent) -> None:
        if self._watcher is None:
            return
        if event.kind == "ready":
            self.file_ready.emit(event.path)
        elif event.kind == "moved" and event.dest_path:
            self.file_moved.emit(event.path, event.dest_path)
        elif event.kind == "deleted":
            self.file_deleted.emit(event.path)
