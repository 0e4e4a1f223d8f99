"""FolderWatcher: settling, de-duplication, moves, deletions, pause/resume, polling and thread hygiene."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from watchdog.events import FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent

from engine.watcher import FolderWatcher, WatcherError, WatchEvent, looks_complete

WAIT = 20.0  # generous upper bound on a loaded CI machine; waits end as soon as the condition holds


def jpeg_bytes(side: int = 24, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(side: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


class Recorder:
    """Collects events from the watcher thread; tests wait on conditions, never on fixed sleeps."""

    def __init__(self) -> None:
        self.events: list[tuple[float, WatchEvent]] = []
        self.threads: set[str] = set()
        self.cond = threading.Condition()

    def __call__(self, event: WatchEvent) -> None:
        with self.cond:
            self.events.append((time.monotonic(), event))
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    def of(self, kind: str) -> list[WatchEvent]:
        with self.cond:
            return [e for _, e in self.events if e.kind == kind]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll a condition that no event signals, in short steps."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.02)
    return True


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_watcher(folder: Path, recorder: Recorder, **kwargs: object) -> FolderWatcher:
    options: dict[str, object] = {"settle_seconds": 0.3, "poll_interval": 0.3}
    options.update(kwargs)
    return FolderWatcher([folder], on_event=recorder, **options)  # type: ignore[arg-type]


def test_burst_of_200_and_a_slow_file_give_one_ready_each(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None
) -> None:
    data = jpeg_bytes()
    slow = tmp_path / "slow.jpg"
    slow_data = jpeg_bytes(side=200, seed=1)
    finished: list[float] = []
    watcher = make_watcher(tmp_path, recorder, settle_seconds=0.5)
    watcher.start()
    try:

        def write_slowly() -> None:
            chunks = [
                slow_data[i : i + len(slow_data) // 16]
                for i in range(0, len(slow_data), len(slow_data) // 16)
            ]
            with open(slow, "wb") as f:
                for i, chunk in enumerate(chunks):
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                    # One stall longer than settle_seconds: only the missing EOI marker keeps it back.
                    time.sleep(0.8 if i == 5 else 0.08)
            finished.append(time.monotonic())

        writer = threading.Thread(target=write_slowly)
        writer.start()
        for i in range(200):
            (tmp_path / f"img_{i:03d}.jpg").write_bytes(data)
        names = {str(tmp_path / f"img_{i:03d}.jpg") for i in range(200)} | {str(slow)}
        writer.join()
        assert recorder.wait_for(lambda: {e.path for e in recorder.of("ready")} >= names)
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    ready = recorder.of("ready")
    assert sorted(e.path for e in ready) == sorted(names), "exactly one ready per file"
    ((delivered_at, slow_event),) = [(t, e) for t, e in recorder.events if e.path == str(slow)]
    assert delivered_at > finished[0], "slow.jpg was reported before its last chunk was written"
    assert slow_event.size == len(slow_data)
    assert slow_event.mtime_ns == slow.stat().st_mtime_ns
    assert recorder.threads == {"blurflag-watch-settle"}
    assert not watcher.running


def test_backlog_counts_as_reported_and_rename_delete_are_reported(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None
) -> None:
    for name in ("a.jpg", "b.jpg", "c.png", "notes.txt", ".hidden.jpg", "~lock.jpg", "x.jpg.part"):
        (tmp_path / name).write_bytes(png_bytes() if name.endswith(".png") else jpeg_bytes())
    watcher = make_watcher(tmp_path, recorder)
    backlog = watcher.scan_existing()
    assert backlog == [str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.png")]
    watcher.start()
    try:
        assert watcher.wait_idle(WAIT)
        assert recorder.of("ready") == []  # the backlog was handed out by scan_existing
        os.rename(tmp_path / "a.jpg", tmp_path / "a2.jpg")
        assert recorder.wait_for(lambda: bool(recorder.of("moved")))
        (tmp_path / "b.jpg").unlink()
        assert recorder.wait_for(lambda: bool(recorder.of("deleted")))
        (tmp_path / "_blurflag").mkdir()
        os.rename(tmp_path / "c.png", tmp_path / "_blurflag" / "c.png")  # into the ignored folder
        assert recorder.wait_for(lambda: len(recorder.of("deleted")) == 2)
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    assert recorder.of("moved") == [
        WatchEvent("moved", str(tmp_path / "a.jpg"), str(tmp_path / "a2.jpg"), *_version(tmp_path / "a2.jpg"))
    ]
    assert [e.path for e in recorder.of("deleted")] == [str(tmp_path / "b.jpg"), str(tmp_path / "c.png")]
    assert recorder.of("ready") == [], "a rename is not a new version"


def _version(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def test_pause_holds_events_until_resume(tmp_path: Path, recorder: Recorder, no_thread_leaks: None) -> None:
    watcher = make_watcher(tmp_path, recorder)
    watcher.start()
    try:
        watcher.pause()
        assert watcher.paused
        (tmp_path / "one.jpg").write_bytes(jpeg_bytes())
        (tmp_path / "two.jpg").write_bytes(jpeg_bytes(seed=2))
        assert watcher.wait_idle(WAIT)  # both settled and were queued
        (tmp_path / "two.jpg").unlink()
        assert watcher.wait_idle(WAIT)
        assert recorder.events == []
        watcher.resume()
        assert not watcher.paused
        assert recorder.wait_for(lambda: len(recorder.events) == 3)
    finally:
        watcher.stop()
    kinds = [(e.kind, Path(e.path).name) for _, e in recorder.events]
    assert sorted(kinds[:2]) == [("ready", "one.jpg"), ("ready", "two.jpg")]
    assert kinds[2] == ("deleted", "two.jpg")


def test_polling_mode_reports_new_moved_and_deleted(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None
) -> None:
    watcher = make_watcher(tmp_path, recorder, use_polling=True, poll_interval=0.2)
    watcher.start()
    try:
        assert watcher.polled_folders == (str(tmp_path),)
        (tmp_path / "p.jpg").write_bytes(jpeg_bytes())
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 1)
        os.rename(tmp_path / "p.jpg", tmp_path / "q.jpg")
        assert recorder.wait_for(lambda: len(recorder.of("moved")) == 1)
        (tmp_path / "q.jpg").unlink()
        assert recorder.wait_for(lambda: len(recorder.of("deleted")) == 1)
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    assert [e.kind for _, e in recorder.events] == ["ready", "moved", "deleted"]
    assert recorder.of("moved")[0].dest_path == str(tmp_path / "q.jpg")


def test_rescan_catches_lost_events_and_unclaimed_backlog(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "old.jpg").write_bytes(jpeg_bytes())
    watcher = make_watcher(tmp_path, recorder, poll_interval=0.2)
    monkeypatch.setattr(watcher, "_forward", lambda event: None)  # every native event is lost
    watcher.start()  # no scan_existing: the existing file is reported by the first rescan
    try:
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 1)
        (tmp_path / "new.jpg").write_bytes(jpeg_bytes(seed=3))
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 2)
        (tmp_path / "old.jpg").unlink()
        assert recorder.wait_for(lambda: len(recorder.of("deleted")) == 1)
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    assert [Path(e.path).name for e in recorder.of("ready")] == ["old.jpg", "new.jpg"]
    assert recorder.of("deleted")[0].path == str(tmp_path / "old.jpg")


def test_duplicated_and_out_of_order_events_give_one_ready_per_version(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None
) -> None:
    path = tmp_path / "d.jpg"
    watcher = make_watcher(tmp_path, recorder, poll_interval=60.0)  # only the synthetic events below
    watcher.start()
    try:
        assert watcher.wait_idle(WAIT)
        path.write_bytes(jpeg_bytes())
        p = str(path)
        for event in [FileDeletedEvent(p), FileModifiedEvent(p), FileCreatedEvent(p)] * 50:
            watcher._forward(event)  # what a flood of duplicated, reordered native events looks like
        watcher._forward(FileMovedEvent(str(tmp_path / "ghost.jpg"), p))  # a move whose source was never seen
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 1)
        for event in [FileModifiedEvent(p)] * 20:
            watcher._forward(event)
        path.write_bytes(jpeg_bytes(side=40))  # a new version: one more ready
        for event in [FileModifiedEvent(p)] * 20:
            watcher._forward(event)
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 2)
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    first, second = recorder.of("ready")
    assert (first.path, second.path) == (p, p)
    assert second.size == path.stat().st_size != first.size


def test_recursive_watch_skips_ignored_and_hidden_folders(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None
) -> None:
    for sub in ("day1", "_blurflag/motion_blurred", ".cache"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "x.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "top.jpg").write_bytes(jpeg_bytes())
    flat = make_watcher(tmp_path, recorder)
    assert flat.scan_existing() == [str(tmp_path / "top.jpg")]
    deep = make_watcher(tmp_path, recorder, recursive=True)
    assert deep.scan_existing() == [str(tmp_path / "day1" / "x.jpg"), str(tmp_path / "top.jpg")]
    deep.start()
    try:
        (tmp_path / "day2").mkdir()
        (tmp_path / "day2" / "y.jpg").write_bytes(jpeg_bytes())
        (tmp_path / "_blurflag" / "motion_blurred" / "z.jpg").write_bytes(jpeg_bytes())
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 1)
        assert deep.wait_idle(WAIT)
    finally:
        deep.stop()
    assert [e.path for e in recorder.of("ready")] == [str(tmp_path / "day2" / "y.jpg")]


def test_looks_complete_needs_the_end_of_the_file(tmp_path: Path) -> None:
    jpeg, png = jpeg_bytes(side=64), png_bytes()
    cases = {
        "full.jpg": (jpeg, True),
        "cut.jpg": (jpeg[: len(jpeg) - 20], False),
        "header_only.jpg": (jpeg[:200], False),
        "preallocated.jpg": (jpeg[:-2] + b"\0" * 4096, False),  # size set up front, data not yet written
        "full.png": (png, True),
        "cut.png": (png[:-12], False),
        "empty.jpg": (b"", False),
        "text.jpg": (b"this is not an image at all" * 10, False),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {name: looks_complete(tmp_path / name) for name in cases} == {
        n: ok for n, (_, ok) in cases.items()
    }
    assert not looks_complete(tmp_path / "missing.jpg")


def test_a_truncated_file_is_reported_after_the_grace_period(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None
) -> None:
    watcher = make_watcher(tmp_path, recorder, settle_seconds=0.2, incomplete_grace=0.8)
    watcher.start()
    try:
        started = time.monotonic()
        (tmp_path / "broken.jpg").write_bytes(jpeg_bytes(side=64)[:-40])
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 1)
        assert time.monotonic() - started >= 0.8  # held back while it might still be growing
    finally:
        watcher.stop()


def test_start_stop_errors_and_idempotence(tmp_path: Path, recorder: Recorder, no_thread_leaks: None) -> None:
    with pytest.raises(WatcherError, match="folder not found"):
        make_watcher(tmp_path / "nope", recorder).start()
    (tmp_path / "file.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(WatcherError, match="not a folder"):
        make_watcher(tmp_path / "file.jpg", recorder).start()
    with pytest.raises(ValueError):
        FolderWatcher([], on_event=recorder)
    watcher = make_watcher(tmp_path, recorder)
    watcher.stop()  # before start: nothing to do
    watcher.start()
    assert watcher.running
    with pytest.raises(RuntimeError):
        watcher.start()
    watcher.stop()
    watcher.stop()
    assert not watcher.running
    watcher.start()  # restartable; the file was reported in the first run and is not reported again
    try:
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    assert [Path(e.path).name for e in recorder.of("ready")] == ["file.jpg"]


def test_callback_errors_do_not_stop_the_watcher(tmp_path: Path, no_thread_leaks: None) -> None:
    seen: list[str] = []

    def flaky(event: WatchEvent) -> None:
        seen.append(Path(event.path).name)
        if len(seen) == 1:
            raise RuntimeError("GUI went away")

    rec = Recorder()
    watcher = FolderWatcher([tmp_path], on_event=flaky, settle_seconds=0.2, poll_interval=0.3)
    watcher.start()
    try:
        (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
        assert watcher.wait_idle(WAIT)
        (tmp_path / "b.jpg").write_bytes(jpeg_bytes())
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    del rec
    assert seen == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("use_polling", [False, True])
def test_an_unplugged_folder_reports_no_deletions_and_recovers(
    tmp_path: Path, recorder: Recorder, no_thread_leaks: None, use_polling: bool
) -> None:
    card = tmp_path / "card"
    card.mkdir()
    (card / "old.jpg").write_bytes(jpeg_bytes())
    watcher = make_watcher(card, recorder, use_polling=use_polling, poll_interval=0.2)
    watcher.scan_existing()
    watcher.start()
    try:
        assert watcher.wait_idle(WAIT)
        os.rename(card, tmp_path / "away")  # the card is pulled out
        assert watcher.wait_idle(WAIT)
        assert watcher.wait_idle(WAIT)  # two rescans without the folder
        if use_polling:
            assert wait_until(lambda: watcher._orphaned_roots() == (str(card),))  # its poller gave up
        os.rename(tmp_path / "away", card)  # ... and put back, with a new photo
        (card / "new.jpg").write_bytes(jpeg_bytes(seed=5))
        assert recorder.wait_for(lambda: len(recorder.of("ready")) == 1)
        assert watcher.wait_idle(WAIT)
    finally:
        watcher.stop()
    assert [(e.kind, Path(e.path).name) for _, e in recorder.events] == [("ready", "new.jpg")]
