"""Watching folders for new photos: settle each file, de-duplicate, and report every file version once.

The watchdog handler only filters paths and forwards them to a queue. One settle thread owns all
state: it drains the queue, stats the files that changed, and reports a file as ``ready`` once its
size and mtime have been stable for ``settle_seconds`` and its bytes look complete (so a half-copied
photo is never classified). A periodic rescan catches what native events missed (an overflowing
inotify queue, a burst of thousands of files) and doubles as the baseline when watching starts.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from PIL import Image, UnidentifiedImageError
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from engine.errors import EngineError
from engine.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

EventKind = Literal["ready", "moved", "deleted"]

#: File systems whose change notifications are missing or unreliable (Linux names from /proc/mounts).
NETWORK_FILESYSTEMS: frozenset[str] = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "davfs", "fuse.davfs2", "fuse.sshfs", "sshfs", "fuse.rclone", "fuse.s3fs", "fuse.glusterfs",
        "fuse.gvfsd-fuse", "vboxsf", "fuse.vmhgfs-fuse", "prl_fs",
    }
)  # fmt: skip
_JPEG_TAIL = 64 * 1024  # EOI must appear in the last bytes after the scan header (trailers allowed)
_MIN_TICK = 0.02
_MAX_TICK = 0.25


class WatcherError(EngineError):
    """A folder cannot be watched (missing, not a folder, or the watch could not be set up)."""


@dataclass(frozen=True)
class WatchEvent:
    """One thing that happened to an image file in a watched folder.

    ``ready``: a new or changed image has settled and can be classified (``size``/``mtime_ns`` say
    which version). ``moved``: ``path`` was renamed to ``dest_path``. ``deleted``: ``path`` is gone
    (or moved somewhere the watcher ignores, such as the ``_blurflag`` subfolder).
    """

    kind: EventKind
    path: str
    dest_path: str | None = None
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class _Msg:
    """What the watchdog handler forwards to the settle thread."""

    kind: Literal[
        "touch", "moved", "deleted", "dir_moved", "dir_deleted", "dir_created", "rescan", "resume", "stop"
    ]
    path: str = ""
    dest: str = ""
    ticket: int = 0


@dataclass
class _Pending:
    """A file seen changing that has not been reported yet (settle-thread state)."""

    size: int
    mtime_ns: int
    changed_at: float
    next_check: float


class _Forwarder(FileSystemEventHandler):
    """The watchdog handler: filters events and forwards them, nothing else."""

    def __init__(self, watcher: FolderWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher._forward(event)


def needs_polling(folder: str | Path) -> bool:
    """Whether a folder lives on a drive where native change notifications cannot be trusted.

    True for network shares (NFS, SMB/CIFS, SSHFS, ... on Linux; remote and removable drives and UNC
    paths on Windows). Elsewhere (and on macOS, where FSEvents covers local volumes) False.
    """
    path = os.path.realpath(os.fspath(folder))
    if sys.platform == "win32":
        if path.startswith("\\\\"):
            return True
        import ctypes

        drive = os.path.splitdrive(path)[0]
        if not drive:
            return False
        kind = ctypes.windll.kernel32.GetDriveTypeW(drive + "\\")  # type: ignore[attr-defined]
        return int(kind) in (2, 4)  # DRIVE_REMOVABLE, DRIVE_REMOTE
    if sys.platform.startswith("linux"):
        return _linux_fstype(path) in NETWORK_FILESYSTEMS
    return False


def _linux_fstype(path: str) -> str:
    """The type of the file system holding `path`, from /proc/self/mounts ("" when unknown)."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        return ""
    return fstype


def looks_complete(path: str | Path) -> bool:
    """Whether an image file's bytes look fully written: decodable header, and an end marker where the format has one.

    JPEG needs the EOI marker (FF D9) among the last bytes after the scan header (cameras may append
    trailers); PNG needs its IEND chunk; WebP and BMP need the length their header declares.
    """
    p = os.fspath(path)
    try:
        size = os.stat(p).st_size
        if size < 16:
            return False
        with open(p, "rb") as f:
            head = f.read(16)
            if head[:2] == b"\xff\xd8":
                if not _jpeg_tail_ok(f, size):
                    return False
            elif head[:8] == b"\x89PNG\r\n\x1a\n":
                f.seek(max(0, size - 64))
                if b"IEND" not in f.read(64):
                    return False
            elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                if size < int.from_bytes(head[4:8], "little") + 8:
                    return False
            elif head[:2] == b"BM":
                declared = int.from_bytes(head[2:6], "little")
                if declared and size < declared:
                    return False
        with Image.open(p) as img:
            img.size  # noqa: B018 - the header has been parsed
        return True
    except Image.DecompressionBombError:
        return True  # complete, just too large: the classifier reports it
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError):
        return False


def _jpeg_tail_ok(f: IO[bytes], size: int) -> bool:
    """Walk the JPEG marker segments to the first scan, then look for EOI in the file's tail."""
    pos = 2
    while True:
        f.seek(pos)
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return False
        code = marker[1]
        if code == 0xFF:  # fill byte
            pos += 1
            continue
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length
            pos += 2
            continue
        raw = f.read(2)
        if len(raw) < 2:
            return False
        length = int.from_bytes(raw, "big")
        if length < 2:
            return False
        pos += 2 + length
        if code == 0xDA:  # start of scan: entropy-coded data follows
            break
        if code == 0xD9:
            return False
    if pos >= size:
        return False
    start = max(pos, size - _JPEG_TAIL)
    f.seek(start)
    return b"\xff\xd9" in f.read(size - start)


class FolderWatcher:
    """Watches folders and reports settled, de-duplicated image events through `on_event`.

    `on_event` is called from the watcher's own thread, never concurrently with itself. Files
    returned by `scan_existing` count as reported at the version seen; without calling it, the
    first rescan after `start` reports every existing image as ``ready``. Folders on network
    drives are polled automatically (`needs_polling`) unless ``auto_polling=False``; the periodic
    rescan covers natively watched folders (polled ones are rescanned by the polling observer).
    """

    def __init__(
        self,
        folders: Sequence[str | Path],
        *,
        recursive: bool = False,
        on_event: Callable[[WatchEvent], None],
        settle_seconds: float = 1.0,
        use_polling: bool = False,
        poll_interval: float = 2.0,
        ignore_dirs: Sequence[str] = ("_blurflag",),
        auto_polling: bool = True,
        incomplete_grace: float = 30.0,
    ) -> None:
        """Set up (not start) a watcher.

        Args:
            folders: folders to watch.
            recursive: watch subfolders too (except hidden ones and ``ignore_dirs``).
            on_event: receives every `WatchEvent`, on the watcher's thread.
            settle_seconds: how long size and mtime must stay unchanged before a file is ready.
            use_polling: poll every folder instead of using native notifications.
            poll_interval: seconds between polls, and between safety rescans of native folders.
            ignore_dirs: subfolder names never looked into (BlurFlag's own output folder).
            auto_polling: poll folders on network drives even when ``use_polling`` is False.
            incomplete_grace: a file stable this long is reported even if it looks truncated,
                so that a damaged photo gets an error result instead of silently waiting forever.
        """
        if not folders:
            raise ValueError("FolderWatcher needs at least one folder")
        self._roots = tuple(dict.fromkeys(os.path.realpath(os.fspath(f)) for f in folders))
        self._recursive = recursive
        self._on_event = on_event
        self._settle = max(0.0, float(settle_seconds))
        self._use_polling = use_polling
        self._auto_polling = auto_polling
        self._poll_interval = max(0.05, float(poll_interval))
        self._ignore_dirs = frozenset(ignore_dirs)
        self._grace = max(self._settle, float(incomplete_grace))
        self._tick = min(_MAX_TICK, max(_MIN_TICK, self._settle / 4))

        self._queue: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _known (shared with scan_existing)
        self._known: dict[str, tuple[int, int]] = {}  # path -> version last reported
        self._pending: dict[str, _Pending] = {}
        self._missing: dict[str, int] = {}  # known path -> consecutive rescans it was missing in
        self._outbox: list[WatchEvent] = []  # emitted under the lock, delivered after it
        self._held: list[WatchEvent] = []  # emitted while paused
        self._paused = threading.Event()
        self._cond = threading.Condition()
        self._tickets = 0  # wait_idle requests
        self._served = 0  # the last request answered by a full pass (rescan, settle, delivery)
        self._observers: list[BaseObserver] = []
        self._native_roots: tuple[str, ...] = ()
        self._polled_roots: tuple[str, ...] = ()
        self._thread: threading.Thread | None = None
        self._running = False

    # -- public API -------------------------------------------------------------------------

    @property
    def folders(self) -> tuple[str, ...]:
        """The watched folders, as absolute real paths."""
        return self._roots

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def polled_folders(self) -> tuple[str, ...]:
        """Folders watched by polling since `start` (requested, network drives, or native watch failed)."""
        return self._polled_roots

    def scan_existing(self) -> list[str]:
        """The backlog: image files already in the folders, sorted; they count as reported at this version."""
        found: dict[str, tuple[int, int]] = {}
        for root in self._roots:
            for path, st in self._walk(root):
                found[path] = (st.st_size, st.st_mtime_ns)
        with self._lock:
            self._known.update(found)
        return sorted(found)

    def start(self) -> None:
        """Start the observers (native or polling) and the settle thread.

        Raises:
            WatcherError: a folder is missing or is not a folder.
        """
        if self._running:
            raise RuntimeError("the watcher is already running")
        for root in self._roots:
            if not os.path.isdir(root):
                raise WatcherError(
                    f"cannot watch {root}: "
                    + ("not a folder" if os.path.exists(root) else "folder not found")
                )
        polled = [r for r in self._roots if self._use_polling or (self._auto_polling and needs_polling(r))]
        native = [r for r in self._roots if r not in polled]
        handler = _Forwarder(self)
        self._queue = queue.SimpleQueue()
        self._observers = []
        if native:
            observer = Observer()
            try:
                for root in native:
                    observer.schedule(handler, root, recursive=self._recursive)
                observer.start()
                self._observers.append(observer)
            except OSError as exc:  # e.g. the inotify watch limit: fall back to polling
                log.warning("native folder watching failed (%s); polling instead", exc)
                _stop_observer(observer, 1.0)
                polled += native
                native = []
        if polled:
            poller = PollingObserver(timeout=self._poll_interval)
            for root in polled:
                poller.schedule(handler, root, recursive=self._recursive)
            try:
                poller.start()
            except OSError as exc:
                for obs in self._observers:
                    _stop_observer(obs, 1.0)
                self._observers = []
                raise WatcherError(f"cannot watch {', '.join(polled)}: {exc}") from None
            self._observers.append(poller)
        self._native_roots, self._polled_roots = tuple(native), tuple(polled)
        self._thread = threading.Thread(target=self._run, name="blurflag-watch-settle", daemon=True)
        self._running = True
        self._thread.start()

    def pause(self) -> None:
        """Hold events back (they are queued, not lost) until `resume`."""
        self._paused.set()

    def resume(self) -> None:
        """Deliver everything held while paused, in order, then carry on."""
        self._paused.clear()
        self._queue.put(_Msg("resume"))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join every thread this watcher started; safe to call twice or from `on_event`."""
        observers, self._observers = self._observers, []
        deadline = time.monotonic() + timeout
        for obs in observers:
            obs.stop()
        for obs in observers:
            _join(obs, deadline)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_Msg("stop"))
            if thread is not threading.current_thread():
                _join(thread, deadline)
        self._running = False
        with self._cond:
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until a rescan has run after this call and nothing is left settling or undelivered.

        Meant for tests and orderly shutdown; for polled folders it cannot tell whether the polling
        observer has looked yet.

        Returns:
            True when idle, False on timeout or when the watcher is not running.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._tickets += 1
            ticket = self._tickets
            self._queue.put(_Msg("rescan", ticket=ticket))
            while self._running:
                if self._served >= ticket and not self._pending and self._queue.empty():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return False

    # -- filtering (any thread) -------------------------------------------------------------

    def _root_of(self, path: str) -> str | None:
        for root in self._roots:
            if path.startswith(root) and (len(path) == len(root) or path[len(root)] == os.sep):
                return root
        return None

    def _dir_ok(self, root: str, directory: str) -> bool:
        """Whether files directly inside `directory` (under `root`) are watched."""
        if directory == root:
            return True
        if not self._recursive:
            return False
        rel = os.path.relpath(directory, root)
        return all(not _hidden(part) and part not in self._ignore_dirs for part in rel.split(os.sep))

    def _name_ok(self, name: str) -> bool:
        if _hidden(name) or name.startswith("~") or name.endswith("~"):
            return False
        return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES

    def _wanted(self, path: str) -> bool:
        """Whether `path` is an image file this watcher reports on."""
        root = self._root_of(path)
        if root is None or path == root:
            return False
        directory, name = os.path.split(path)
        return self._name_ok(name) and self._dir_ok(root, directory)

    def _wanted_dir(self, path: str) -> bool:
        root = self._root_of(path)
        return root is not None and path != root and self._dir_ok(root, path)

    def _forward(self, event: FileSystemEvent) -> None:
        """Runs on watchdog's thread: filter and enqueue, no I/O."""
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return  # reads (ours included) change nothing
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        if event.is_directory:
            if not self._recursive:
                return
            if kind == "moved" and (self._wanted_dir(src) or self._wanted_dir(dest)):
                self._queue.put(_Msg("dir_moved", src, dest))
            elif kind == "deleted" and self._root_of(src):
                self._queue.put(_Msg("dir_deleted", src))
            elif kind == "created" and self._wanted_dir(src):
                self._queue.put(_Msg("dir_created", src))
            return
        if kind == "moved":
            if self._wanted(src) or self._wanted(dest):
                self._queue.put(_Msg("moved", src, dest))
        elif kind == "deleted":
            if self._wanted(src):
                self._queue.put(_Msg("deleted", src))
        elif self._wanted(src):  # created, modified, closed, attrib
            self._queue.put(_Msg("touch", src))

    def _walk(self, root: str, top: str | None = None) -> Iterator[tuple[str, os.stat_result]]:
        """Image files under `top` (default `root`) with their stat, by the watcher's filters."""
        stack = [top or root]
        while stack:
            directory = stack.pop()
            try:
                entries = os.scandir(directory)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if self._recursive and self._dir_ok(root, entry.path):
                                stack.append(entry.path)
                        elif self._name_ok(entry.name) and entry.is_file():
                            yield entry.path, entry.stat()
                    except OSError:
                        continue  # vanished or unreadable: the next event or rescan sees it

    # -- the settle thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # never die silently: the log says why watching stopped
            log.exception("the folder watcher's settle thread failed")
            self._running = False
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        next_rescan = time.monotonic()
        first = True
        while True:
            now = time.monotonic()
            wait = next_rescan - now
            if self._pending:
                wait = min(wait, min(p.next_check for p in self._pending.values()) - now)
            msgs = self._drain(max(0.0, wait))
            requested = max((m.ticket for m in msgs if m.kind == "rescan"), default=0)
            with self._lock:
                for msg in msgs:
                    if msg.kind == "stop":
                        return
                    self._handle(msg)
                now = time.monotonic()
                if now >= next_rescan or requested:
                    roots = self._roots if first else self._native_roots + self._orphaned_roots()
                    for root in roots:
                        self._rescan(root)
                    first = False
                    next_rescan = time.monotonic() + self._poll_interval
                self._check_pending(time.monotonic())
            # Deliver outside the lock, so that on_event may call scan_existing (or stop).
            outbox, self._outbox = self._outbox, []
            if self._paused.is_set():
                self._held.extend(outbox)
            else:
                held, self._held = self._held, []
                for ev in held + outbox:
                    if not self._running:
                        break
                    if self._paused.is_set():
                        self._held.append(ev)
                    else:
                        self._deliver(ev)
            with self._cond:
                self._served = max(self._served, requested)
                self._cond.notify_all()

    def _drain(self, wait: float) -> list[_Msg]:
        msgs: list[_Msg] = []
        try:
            msgs.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            while len(msgs) < 50_000:
                msgs.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return msgs

    def _handle(self, msg: _Msg) -> None:
        if msg.kind == "touch":
            if msg.path:
                self._touch(msg.path)
        elif msg.kind == "moved":
            self._moved(msg.path, msg.dest)
        elif msg.kind == "deleted":
            self._deleted(msg.path)
        elif msg.kind == "dir_moved":
            self._dir_moved(msg.path, msg.dest)
        elif msg.kind == "dir_deleted":
            if msg.path in self._roots:
                return  # a drive unplugged or a share gone: unavailable, not deleted; rescans take over
            prefix = msg.path.rstrip(os.sep) + os.sep
            for path in [p for p in self._pending if p.startswith(prefix)]:
                del self._pending[path]
            for path in [p for p in self._known if p.startswith(prefix)]:
                self._deleted(path)
        elif msg.kind == "dir_created":
            root = self._root_of(msg.path)
            if root is not None:
                for path, _ in self._walk(root, msg.path):
                    self._touch(path)

    def _touch(self, path: str) -> None:
        if path not in self._pending:
            now = time.monotonic()
            self._pending[path] = _Pending(-1, -1, now, now)
        else:
            self._pending[path].next_check = time.monotonic()

    def _moved(self, src: str, dest: str) -> None:
        self._pending.pop(src, None)
        self._missing.pop(src, None)
        version = self._known.pop(src, None)
        dest_ok = bool(dest) and self._wanted(dest)
        if version is not None:
            if dest_ok and self._known.get(dest) != version:
                self._known[dest] = version
                self._emit(WatchEvent("moved", src, dest, version[0], version[1]))
            else:  # moved out of view, or its new name was already reported by a rescan
                self._emit(WatchEvent("deleted", src))
        if dest_ok:
            self._touch(dest)  # same version: nothing; a rename over a changed file: ready

    def _deleted(self, path: str) -> None:
        self._pending.pop(path, None)
        self._missing.pop(path, None)
        if os.path.lexists(path):  # out-of-order events: the file is back
            self._touch(path)
            return
        if self._known.pop(path, None) is not None:
            self._emit(WatchEvent("deleted", path))

    def _dir_moved(self, src: str, dest: str) -> None:
        prefix = src.rstrip(os.sep) + os.sep
        for path in [p for p in self._pending if p.startswith(prefix)]:
            del self._pending[path]
        for path in sorted(p for p in self._known if p.startswith(prefix)):
            self._moved(path, os.path.join(dest, path[len(prefix) :]) if dest else "")
        root = self._root_of(dest) if dest else None
        if root is not None and self._dir_ok(root, dest):
            for path, _ in self._walk(root, dest):
                self._touch(path)

    def _orphaned_roots(self) -> tuple[str, ...]:
        """Polled folders whose polling emitter stopped (the folder vanished once): rescanned by us instead."""
        alive = {
            os.path.realpath(os.fsdecode(emitter.watch.path))
            for observer in self._observers
            if isinstance(observer, PollingObserver)
            for emitter in list(observer.emitters)
            if emitter.is_alive()
        }
        return tuple(r for r in self._polled_roots if r not in alive)

    def _rescan(self, root: str) -> None:
        if not os.path.isdir(root):
            return  # unavailable (unplugged, offline): report nothing rather than mass deletions
        seen: set[str] = set()
        now = time.monotonic()
        for path, st in self._walk(root):
            seen.add(path)
            if self._known.get(path) != (st.st_size, st.st_mtime_ns) and path not in self._pending:
                self._pending[path] = _Pending(-1, -1, now, now)
        prefix = root.rstrip(os.sep) + os.sep
        for path in [p for p in self._known if p.startswith(prefix) and p not in seen]:
            # Missing twice in a row: a deletion whose event was lost (a move event had its chance).
            count = self._missing.get(path, 0) + 1
            if count >= 2 and not os.path.lexists(path):
                self._deleted(path)
            else:
                self._missing[path] = count
        for path in [p for p in self._missing if p.startswith(prefix) and p in seen]:
            del self._missing[path]

    def _check_pending(self, now: float) -> None:
        for path, pend in list(self._pending.items()):
            if pend.next_check > now:
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                del self._pending[path]
                continue
            except OSError:
                pend.next_check = now + max(self._tick, 0.5)
                continue
            version = (st.st_size, st.st_mtime_ns)
            if version != (pend.size, pend.mtime_ns):
                pend.size, pend.mtime_ns = version
                pend.changed_at = now
            if self._known.get(path) == version:
                del self._pending[path]  # this version was reported already
                continue
            stable = now - pend.changed_at
            if stable < self._settle:
                pend.next_check = min(now + self._tick, pend.changed_at + self._settle)
                continue
            if looks_complete(path) or stable >= self._grace:
                del self._pending[path]
                self._known[path] = version
                self._emit(WatchEvent("ready", path, None, version[0], version[1]))
            else:
                pend.next_check = now + max(self._tick, min(1.0, self._settle))

    def _emit(self, event: WatchEvent) -> None:
        self._outbox.append(event)

    def _deliver(self, event: WatchEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("the watcher's on_event callback failed for %s", event)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _join(thread: threading.Thread, deadline: float) -> None:
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        log.warning("thread %s did not stop in time", thread.name)


def _stop_observer(observer: BaseObserver, timeout: float) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout)
    except RuntimeError:
        pass
