"""The main window: drag and drop, flagging, keyboard culling, responsiveness, clean shutdown, screenshots."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from desktop import settings as S
from desktop.results_view import Column
from tests.desktop.conftest import write_jpeg

TIMEOUT = 30_000
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


def _real(p: Path) -> str:
    return os.path.realpath(p)


def _drop(window, urls: list[QUrl]) -> tuple[bool, bool]:
    """Send a real drag-enter and drop to the window; returns whether each was accepted."""
    mime = QMimeData()
    mime.setUrls(urls)
    pos = QPointF(window.width() / 2, window.height() / 2)
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, drop)
    return enter.isAccepted(), drop.isAccepted()


def test_drop_files_and_folders_checks_them_at_once(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    window.show()
    single = write_jpeg(tmp_path / "single.jpg", 1, (640, 427))
    folder = tmp_path / "dropped"
    inside = [write_jpeg(folder / f"f{i}.jpg", 10 + i) for i in range(3)]
    bad = tmp_path / "broken.jpg"
    bad.write_text("nope")
    started = time.monotonic()
    accepted = _drop(window, [QUrl.fromLocalFile(str(single))])
    assert accepted == (True, True)
    qtbot.waitUntil(lambda: window.model.row_for(_real(single)) is not None, timeout=TIMEOUT)
    assert time.monotonic() - started < 5.0
    # The dropped photo is selected and shown in the detail pane.
    qtbot.waitUntil(lambda: window.detail.current_path == _real(single), timeout=TIMEOUT)
    assert _drop(window, [QUrl.fromLocalFile(str(folder)), QUrl.fromLocalFile(str(bad))]) == (True, True)
    expected = {_real(p) for p in [single, *inside, bad]}
    qtbot.waitUntil(lambda: {r.path for r in window.model.rows()} == expected, timeout=TIMEOUT)
    assert not window.model.row_for(_real(bad)).result.ok
    # Something that is not a local file is refused.
    assert _drop(window, [QUrl("https://example.com/a.jpg")]) == (False, False)


def test_flagged_filter_sorting_and_blur_type(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    names = ["motion_1.jpg", "motion_2.jpg", "defocus_1.jpg", "subject_1.jpg", "sharp_1.jpg", "sharp_2.jpg"]
    files = [write_jpeg(tmp_path / n, i) for i, n in enumerate(names)]
    window = make_window(classifier=fake_classifier)
    window.set_blur_type("motion_blurred")
    window.check_paths([str(p) for p in files])
    qtbot.waitUntil(lambda: len(window.model.rows()) == 6, timeout=TIMEOUT)
    assert window.model.counts() == (6, 2, 0)
    window.set_flagged_only(True)
    assert window.proxy.rowCount() == 2
    shown = {window.proxy.index(r, Column.FILE).data() for r in range(window.proxy.rowCount())}
    assert shown == {"motion_1.jpg", "motion_2.jpg"}
    # All-classes mode flags every blur type; the filter follows without reclassifying.
    classified = window.worker.classified_count
    window.set_blur_type(None)
    assert window.proxy.rowCount() == 4
    assert window.worker.classified_count == classified
    window.set_blur_type("defocused_blurred")
    assert [window.proxy.index(0, Column.FILE).data()] == ["defocus_1.jpg"]
    assert window.proxy.index(0, Column.TYPE_PROB).data() == "85%"
    window.set_flagged_only(False)
    # Sorting: by file name, then by verdict (flagged first when descending).
    window.view.sortByColumn(Column.FILE, Qt.SortOrder.AscendingOrder)
    col = [window.proxy.index(r, Column.FILE).data() for r in range(6)]
    assert col == sorted(names)
    window.view.sortByColumn(Column.VERDICT, Qt.SortOrder.DescendingOrder)
    assert window.proxy.index(0, Column.FILE).data() == "defocus_1.jpg"
    # Settings remember the choice.
    assert window.settings.get(S.BLUR_TYPE) == "defocused_blurred"


def test_culling_keys_mark_and_persist_overrides(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    files = [write_jpeg(tmp_path / n, i) for i, n in enumerate(["motion_a.jpg", "sharp_b.jpg", "sharp_c.jpg"])]
    window = make_window(classifier=fake_classifier)
    window.show()
    window.set_blur_type("motion_blurred")
    window.check_paths([str(p) for p in files])
    qtbot.waitUntil(lambda: len(window.model.rows()) == 3, timeout=TIMEOUT)
    window.view.sortByColumn(Column.FILE, Qt.SortOrder.AscendingOrder)
    window.view.setFocus()
    window.select_path(_real(files[0]))
    assert window.current_row().path == _real(files[0])

    qtbot.keyClick(window.view, Qt.Key.Key_P)  # the model said motion blur; the photographer says sharp
    assert window.model.row_for(_real(files[0])).override == "sharp"
    assert window.store.overrides() == {_real(files[0]): "sharp"}
    assert window.model.counts()[1] == 0  # no longer flagged

    qtbot.keyClick(window.view, Qt.Key.Key_Down)
    assert window.current_row().path == _real(files[1])
    qtbot.keyClick(window.view, Qt.Key.Key_X)  # reject: mark as the chosen blur type
    assert window.model.row_for(_real(files[1])).override == "motion_blurred"
    assert window.model.counts()[1] == 1
    qtbot.keyClick(window.view, Qt.Key.Key_2)  # the second blur type in the model's order
    assert window.model.row_for(_real(files[1])).override == fake_classifier.blur_types[1]
    qtbot.keyClick(window.view, Qt.Key.Key_U)
    assert window.model.row_for(_real(files[1])).override is None
    assert window.store.overrides() == {_real(files[0]): "sharp"}

    qtbot.keyClick(window.view, Qt.Key.Key_Right)
    assert window.current_row().path == _real(files[2])
    qtbot.keyClick(window.view, Qt.Key.Key_Space)
    assert window.preview_mode
    qtbot.keyClick(window.detail, Qt.Key.Key_Left)
    assert window.current_row().path == _real(files[1])
    qtbot.keyClick(window.detail, Qt.Key.Key_Space)
    assert not window.preview_mode

    # Overrides survive a restart (they live in the result store).
    window.close()
    again = make_window(classifier=fake_classifier)
    again.check_paths([str(files[0])])
    qtbot.waitUntil(lambda: len(again.model.rows()) == 1, timeout=TIMEOUT)
    assert again.model.rows()[0].override == "sharp"


def test_detail_pane_shows_preview_and_focus_overlay(qtbot, make_window, tmp_path: Path) -> None:
    photo = write_jpeg(tmp_path / "IMG_1.jpg", 3, (900, 600))
    window = make_window()
    window.show()
    window.check_paths([str(photo)])
    qtbot.waitUntil(lambda: window.detail.preview is not None, timeout=TIMEOUT)
    assert window.detail.preview.image.width() == 900
    qtbot.keyClick(window.view, Qt.Key.Key_F)
    qtbot.waitUntil(lambda: window.detail.preview.overlay is not None, timeout=TIMEOUT)
    assert window.detail.canvas.image() == window.detail.preview.overlay
    qtbot.keyClick(window.view, Qt.Key.Key_F)
    assert window.detail.canvas.image() == window.detail.preview.image


def test_window_stays_responsive_during_a_backlog(qtbot, make_window, tmp_path: Path) -> None:
    folder = tmp_path / "backlog"
    files = [write_jpeg(folder / f"IMG_{i:04d}.jpg", i, (160, 120)) for i in range(300)]
    window = make_window()
    window.show()
    gaps: list[float] = []
    last = [time.monotonic()]

    progress: list[tuple[int, int]] = []

    def tick() -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now
        if window.progress.isVisible():
            progress.append((window.progress.value(), window.progress.maximum()))

    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(tick)
    timer.start()
    window.add_folder(folder)
    window.start_watching()
    qtbot.waitUntil(lambda: len(window.model.rows()) == len(files), timeout=120_000)
    timer.stop()
    assert window.worker.classified_count == len(files)
    assert len(gaps) > 20
    worst = max(gaps)
    assert worst < 0.5, f"the GUI thread was blocked for {worst * 1000:.0f} ms"
    # The backlog progress bar counted up towards the backlog's size, and is gone once done.
    assert progress and max(m for _, m in progress) == len(files)
    assert [v for v, _ in progress] == sorted(v for v, _ in progress)
    qtbot.waitUntil(lambda: not window.progress.isVisible(), timeout=TIMEOUT)
    window._update_status()
    assert window.counts_label.text().startswith(f"Processed {len(files)}")


def test_close_stops_everything(qtbot, make_window, tmp_path: Path) -> None:
    folder = tmp_path / "w"
    for i in range(20):
        write_jpeg(folder / f"{i}.jpg", i)
    before = {t.name for t in threading.enumerate()}
    window = make_window()
    window.show()
    window.add_folder(folder)
    window.start_watching()
    qtbot.waitUntil(lambda: len(window.model.rows()) >= 1, timeout=TIMEOUT)
    window.select_path(window.model.rows()[0].path)
    window.close()
    ours = [t.name for t in threading.enumerate() if t.name not in before and not isinstance(t, threading._DummyThread)]
    assert ours == []
    assert not window.worker.running and not window.bridge.watching


def test_gui_process_never_loads_torch_ultralytics_or_opencv(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from pathlib import Path
        from PySide6.QtWidgets import QApplication
        from desktop import settings as S
        from desktop.main_window import MainWindow
        from tests.desktop.conftest import write_jpeg
        app = QApplication([])
        folder = Path({str(tmp_path)!r}) / "photos"
        write_jpeg(folder / "a.jpg", 1)
        s = S.Settings(Path({str(tmp_path)!r}) / "s.ini", Path({str(tmp_path)!r}) / "data")
        w = MainWindow(s)
        w.show()
        w.tabs.setCurrentWidget(w.trainer_tab)
        w.check_paths([str(folder)])
        import time
        end = time.monotonic() + 20
        while not w.model.rows() and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)
        w.close()
        heavy = sorted(m for m in ("torch", "ultralytics", "cv2", "torchvision") if m in sys.modules)
        print("ROWS", len(w.model.rows()), "HEAVY", heavy)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                         cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ROWS 1 HEAVY []" in out.stdout, out.stdout + out.stderr[-2000:]


def test_screenshots_of_the_main_states(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    """Saves PNGs for a person to look at (test-artifacts/screenshots/)."""
    folder = tmp_path / "Marathon 2026"
    names = ["sharp_0412.jpg", "motion_0413.jpg", "sharp_0414.jpg", "defocus_0415.jpg", "sharp_0416.jpg",
             "subject_0417.jpg", "motion_0418.jpg", "sharp_0419.jpg"]
    from PIL import ImageFilter

    from tests.toydata import blurred, scene

    folder.mkdir()
    for i, n in enumerate(names):
        kind = fake_classifier.label_for(n)
        blurred(scene(40 + i, (900, 600)), kind).save(folder / n, quality=90)
    # A sharp 'runner' on a defocused background, to show what the focus overlay does.
    bokeh = scene(7, (900, 600)).filter(ImageFilter.GaussianBlur(6))
    bokeh.paste(scene(8, (220, 420)), (340, 120))
    bokeh.save(folder / "sharp_0412.jpg", quality=92)
    (folder / "corrupt_0420.jpg").write_text("damaged card")
    window = make_window(classifier=fake_classifier)
    window.resize(1400, 820)
    window.show()
    window.set_blur_type("motion_blurred")
    window.add_folder(folder)
    window.start_watching()
    qtbot.waitUntil(lambda: len(window.model.rows()) == len(names) + 1, timeout=TIMEOUT)
    window.view.sortByColumn(Column.FILE, Qt.SortOrder.AscendingOrder)
    window.select_path(_real(folder / "motion_0413.jpg"))
    qtbot.waitUntil(lambda: window.detail.preview is not None, timeout=TIMEOUT)
    # Wait for the thumbnails of the visible rows.
    qtbot.waitUntil(lambda: all(window.model.thumbnail_done(r.path) for r in window.model.rows()), timeout=TIMEOUT)
    window._update_status()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SCREENSHOTS / "watching_with_results.png"))
    window.select_path(_real(folder / "sharp_0412.jpg"))
    window.detail.set_overlay_enabled(True)
    qtbot.waitUntil(lambda: window.detail.preview is not None and window.detail.preview.overlay is not None
                    and window.detail.current_path == _real(folder / "sharp_0412.jpg"), timeout=TIMEOUT)
    window.set_preview_mode(True)
    assert window.grab().save(str(SCREENSHOTS / "detail_pane_focus_overlay.png"))
    window.set_preview_mode(False)


def test_a_dropped_24_megapixel_jpeg_gets_its_verdict_quickly(qtbot, make_window, tmp_path: Path) -> None:
    from PIL import Image

    from tests.toydata import scene

    big = tmp_path / "DSC_24MP.jpg"
    scene(11, (600, 400)).resize((6000, 4000), Image.Resampling.BILINEAR).save(big, quality=90)
    window = make_window()
    window.show()
    window.check_paths([str(write_jpeg(tmp_path / "warmup.jpg", 1))])  # first inference warms the session up
    qtbot.waitUntil(lambda: len(window.model.rows()) == 1, timeout=TIMEOUT)
    started = time.monotonic()
    assert _drop(window, [QUrl.fromLocalFile(str(big))]) == (True, True)
    qtbot.waitUntil(lambda: window.model.row_for(_real(big)) is not None, timeout=TIMEOUT)
    took = time.monotonic() - started
    assert window.model.row_for(_real(big)).result.ok
    assert took < 2.0, f"verdict after {took:.2f} s"  # the target is about a second; CI machines are slower
