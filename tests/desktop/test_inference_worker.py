"""The inference worker: one thread, a queue, one shared classifier, the result store as a cache."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from desktop.inference_worker import InferenceWorker, Outcome, expand_folder
from tests.desktop.conftest import jpeg_bytes, write_jpeg

TIMEOUT = 30_000


@pytest.fixture
def store(tmp_path: Path):
    from engine.store import ResultStore

    s = ResultStore(tmp_path / "results.sqlite3")
    yield s
    s.close()


@pytest.fixture
def worker(qtbot, classifier, store):
    w = InferenceWorker(classifier, store, batch_size=4)
    got: list[Outcome] = []
    w.results_ready.connect(got.extend)
    w.got = got  # type: ignore[attr-defined]
    w.start()
    yield w
    assert w.stop()


def test_one_result_per_path_with_errors_and_cache(qtbot, worker, store, tmp_path: Path) -> None:
    good = [write_jpeg(tmp_path / f"{i}.jpg", i) for i in range(6)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    missing = tmp_path / "missing.jpg"
    paths = [str(p) for p in [*good, bad]]
    worker.submit(paths + paths)  # duplicates while queued are ignored
    worker.submit([str(missing)], explicit=True)
    qtbot.waitUntil(lambda: len(worker.got) == 8, timeout=TIMEOUT)
    by_path = {o.result.path: o for o in worker.got}
    assert len(by_path) == 8
    assert all(by_path[os.path.realpath(p)].result.ok for p in good)
    assert not by_path[os.path.realpath(bad)].result.ok and by_path[os.path.realpath(bad)].result.error
    assert by_path[os.path.realpath(missing)].result.error == "file not found"
    assert worker.classified_count == 7
    assert len(store) == 7  # every classified file is stored, errors too

    # Again: everything comes from the store, except the file that changed.
    worker.got.clear()
    good[0].write_bytes(jpeg_bytes(1234))
    worker.submit(paths)
    qtbot.waitUntil(lambda: len(worker.got) == 7, timeout=TIMEOUT)
    fresh = [o for o in worker.got if not o.cached]
    assert [o.result.path for o in fresh] == [os.path.realpath(good[0])]
    assert worker.classified_count == 8


def test_watched_file_that_vanished_is_skipped_silently(qtbot, worker, tmp_path: Path) -> None:
    worker.submit([str(tmp_path / "gone.jpg")])
    qtbot.waitUntil(worker.is_idle, timeout=TIMEOUT)
    assert worker.got == []


def test_pause_holds_the_queue_but_not_explicit_paths(qtbot, worker, tmp_path: Path) -> None:
    queued = write_jpeg(tmp_path / "queued.jpg", 1)
    dropped = write_jpeg(tmp_path / "dropped.jpg", 2)
    worker.set_paused(True)
    worker.submit([str(queued)])
    worker.submit([str(dropped)], explicit=True)
    qtbot.waitUntil(lambda: len(worker.got) == 1, timeout=TIMEOUT)
    assert worker.got[0].result.path == os.path.realpath(dropped)
    assert worker.pending_count() == 1
    worker.set_paused(False)
    qtbot.waitUntil(lambda: len(worker.got) == 2, timeout=TIMEOUT)


def test_a_crashing_classifier_gives_error_results_and_the_worker_goes_on(qtbot, tmp_path: Path) -> None:
    class Exploding:
        calls = 0

        def classify_paths(self, paths, blur_type=None, workers=None, batch_size=8):
            Exploding.calls += 1
            if Exploding.calls == 1:
                raise RuntimeError("onnxruntime fell over")
            from engine.results import Classification, ImageResult

            names = ("sharp", "motion_blurred", "defocused_blurred", "defocused_object_portrait")
            return [ImageResult(p, Classification.from_probabilities(names, [0.7, 0.1, 0.1, 0.1])) for p in paths]

    w = InferenceWorker(Exploding(), None, batch_size=1)  # type: ignore[arg-type]
    got: list[Outcome] = []
    w.results_ready.connect(got.extend)
    w.start()
    try:
        a, b = write_jpeg(tmp_path / "a.jpg", 1), write_jpeg(tmp_path / "b.jpg", 2)
        w.submit([str(a), str(b)])
        qtbot.waitUntil(lambda: len(got) == 2, timeout=TIMEOUT)
        assert "onnxruntime fell over" in (got[0].result.error or "")
        assert got[1].result.ok
        assert w.running
    finally:
        assert w.stop()


def test_stop_joins_the_thread_mid_backlog(qtbot, classifier, tmp_path: Path) -> None:
    files = [write_jpeg(tmp_path / f"{i}.jpg", i) for i in range(40)]
    w = InferenceWorker(classifier, None, batch_size=4)
    w.start()
    w.submit([str(p) for p in files])
    assert w.stop(timeout=20)
    assert not w.running
    assert not [t for t in threading.enumerate() if t.name.startswith("blurflag-")]


def test_expand_folder_skips_hidden_and_blurflag(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "a.jpg", 1)
    write_jpeg(tmp_path / ".hidden.jpg", 2)
    write_jpeg(tmp_path / "sub" / "b.JPG", 3)
    write_jpeg(tmp_path / "_blurflag" / "motion_blurred" / "c.jpg", 4)
    (tmp_path / "notes.txt").write_text("x")
    assert [Path(p).name for p in expand_folder(tmp_path)] == ["a.jpg", "b.JPG"]
    assert [Path(p).name for p in expand_folder(tmp_path, recursive=False)] == ["a.jpg"]
