"""The `blurflag-app` entry point: --self-test, --settings, --model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from desktop import app

REPO = Path(__file__).resolve().parents[2]


def test_self_test_returns_the_engine_self_test_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.selftest

    calls: list[int] = []
    monkeypatch.setattr(engine.selftest, "run_self_test", lambda: calls.append(1) or 3)
    assert app.main(["--self-test"]) == 3
    assert calls == [1]


def test_self_test_runs_without_a_display_or_qt(tmp_path: Path) -> None:
    """The real self-test of the bundled model, as a packaged build runs it, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(REPO)
    code = ("import sys; from desktop.app import main; rc = main(['--self-test']); "
            "print('QT', 'PySide6' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
                         check=False)
    from engine.selftest import run_self_test

    expected = run_self_test(out=open(os.devnull, "w"))  # noqa: SIM115
    assert out.returncode == expected, out.stdout + out.stderr
    assert "QT False" in out.stdout


def test_app_runs_with_explicit_settings_and_model(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from desktop import settings as S
    from engine.paths import default_model_dir

    ini = tmp_path / "portable.ini"
    seen: dict[str, object] = {}

    def close_soon() -> None:
        window = QApplication.activeWindow() or next(
            w for w in QApplication.topLevelWidgets() if w.objectName() == "" and hasattr(w, "settings"))
        seen["ini"] = window.settings.ini_path
        seen["model"] = window.model_dir
        seen["data"] = window.settings.data_dir
        window.close()

    QTimer.singleShot(300, close_soon)
    monkeypatch.setattr(QApplication, "exec", lambda self=None: _run_until_closed(qtbot))
    rc = app.main(["--settings", str(ini), "--data-dir", str(tmp_path / "data"), "--model", str(default_model_dir())])
    assert rc == 0
    assert seen == {"ini": ini, "model": str(default_model_dir()), "data": tmp_path / "data"}
    assert S.Settings(ini).get(S.MODEL_DIR) == ""  # --model is for this session only


def _run_until_closed(qtbot) -> int:
    from PySide6.QtWidgets import QApplication

    qtbot.waitUntil(lambda: not any(w.isVisible() for w in QApplication.topLevelWidgets()), timeout=20000)
    return 0


def test_garbage_is_collected_on_the_gui_thread_only(qtbot) -> None:
    import gc

    from PySide6.QtCore import QObject

    from desktop.app import collect_garbage_on_gui_thread

    holder = QObject()
    timer = collect_garbage_on_gui_thread(holder)
    try:
        assert not gc.isenabled() and timer.isActive()
        before = gc.get_count()[0]
        junk = [[i] for i in range(gc.get_threshold()[0] * 2)]
        for item in junk:  # reference cycles only the cyclic collector frees
            item.append(item)
        del junk
        assert gc.get_count()[0] > before
        qtbot.waitUntil(lambda: gc.get_count()[0] < gc.get_threshold()[0], timeout=3000)
    finally:
        timer.stop()
        gc.enable()
