"""engine.trainer_env: how the packaged app finds, checks and runs the separately installed trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import trainer_env as T

HAS_TRAINER = all(
    __import__("importlib.util").util.find_spec(m) is not None for m in ("torch", "torchvision", "ultralytics", "onnx")
)


def _fake_python(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def test_platform_data_dir_matches_qt_generic_data_location(tmp_path: Path) -> None:
    home = tmp_path
    assert T.platform_data_dir({}, home, "linux") == home / ".local/share/BlurFlag"
    assert T.platform_data_dir({"XDG_DATA_HOME": "/x"}, home, "linux") == Path("/x/BlurFlag")
    assert T.platform_data_dir({}, home, "darwin") == home / "Library/Application Support/BlurFlag"
    assert T.platform_data_dir({"LOCALAPPDATA": "C:/L"}, home, "win32") == Path("C:/L/BlurFlag")


def test_platform_data_dir_is_where_the_desktop_keeps_its_data(tmp_path: Path) -> None:
    """The desktop's data folder (Qt) and the launcher's (no Qt) must agree, or the app would not find the trainer."""
    code = "from desktop.settings import default_data_dir; print(default_data_dir())"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share"), "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert Path(out) == T.platform_data_dir(env, Path.home())


def test_venv_python_and_trainer_dir(tmp_path: Path) -> None:
    assert T.venv_python(tmp_path, "linux") == tmp_path / "bin" / "python"
    assert T.venv_python(tmp_path, "win32") == tmp_path / "Scripts" / "python.exe"
    assert T.default_trainer_dir(tmp_path) == tmp_path / "trainer"


def test_subprocess_environment_drops_what_the_frozen_bundle_set(tmp_path: Path) -> None:
    bundle = tmp_path / "blurflag-0.1.0" / "_internal"
    bundle.mkdir(parents=True)
    base = {
        "LD_LIBRARY_PATH": f"{bundle}{os.pathsep}/opt/lib",
        "LD_LIBRARY_PATH_ORIG": "/opt/lib",
        "QT_PLUGIN_PATH": str(bundle / "PySide6" / "Qt" / "plugins"),
        "PATH": f"{bundle}{os.pathsep}/usr/bin",
        "_PYI_APPLICATION_HOME_DIR": str(bundle),
        "HOME": "/home/me",
    }
    env = T.subprocess_environment(base, bundle)
    assert env["LD_LIBRARY_PATH"] == "/opt/lib" and "LD_LIBRARY_PATH_ORIG" not in env
    assert "QT_PLUGIN_PATH" not in env and env["PATH"] == "/usr/bin"
    assert "_PYI_APPLICATION_HOME_DIR" not in env and env["HOME"] == "/home/me"
    assert base["QT_PLUGIN_PATH"]  # the caller's mapping is not changed
    assert T.subprocess_environment({"PATH": "/usr/bin", "X": "1"}, None) == {"PATH": "/usr/bin", "X": "1"}


def test_candidates_order(tmp_path: Path) -> None:
    venv = tmp_path / "my-env"
    venv.mkdir()
    found = T.candidates(tmp_path / "data", venv, include_current=True)
    assert [c.origin for c in found] == ["configured", "installed", "current"]
    assert found[0].python == venv / "bin" / "python"  # a folder means a virtual environment
    assert found[1].python == tmp_path / "data" / "trainer" / "bin" / "python"
    assert T.candidates(None, None, include_current=False) == []


def test_command_isolates_a_separate_environment(tmp_path: Path) -> None:
    installed = T.TrainerEnv(tmp_path / "bin" / "python", "installed")
    assert installed.command(["run", "src"]) == [str(installed.python), "-I", "-m", "trainer.cli", "run", "src"]
    current = T.TrainerEnv(Path(sys.executable), "current")
    assert current.command(["run"]) == [sys.executable, "-m", "trainer.cli", "run"]


def test_probe_reports_a_missing_or_broken_python(tmp_path: Path) -> None:
    missing = T.probe(T.TrainerEnv(tmp_path / "nope", "configured"))
    assert not missing.ok and "does not exist" in missing.message
    broken = T.probe(T.TrainerEnv(_fake_python(tmp_path, "echo boom >&2; exit 1"), "configured"))
    assert not broken.ok and "boom" in broken.message
    garbage = T.probe(T.TrainerEnv(_fake_python(tmp_path, "echo not json"), "configured"))
    assert not garbage.ok


def test_find_trainer_says_what_it_tried(tmp_path: Path) -> None:
    status = T.find_trainer(tmp_path / "data", tmp_path / "nope", include_current=False)
    assert not status.ok and status.env is None
    assert "configured" in status.message and "installed" in status.message and "install-trainer" in status.message


@pytest.mark.skipif(not HAS_TRAINER, reason="needs the train extra")
def test_find_trainer_accepts_this_checkout() -> None:
    status = T.find_trainer(None, None, include_current=True)
    assert status.ok and status.env is not None and status.env.origin == "current"


def test_launcher_status_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(T, "IS_FROZEN", True)  # as in the packaged app: this interpreter is no candidate
    assert T.main(["--data-dir", str(tmp_path), "--status"]) == 3
    assert "NOT available" in capsys.readouterr().out
    no_torch = _fake_python(tmp_path, 'echo \'{"ok": false, "message": "Missing torch.", "version": "0.1.0"}\'')
    assert T.main(["--data-dir", str(tmp_path), "--trainer-python", str(no_torch), "run", "x"]) == 3
    assert "Missing torch." in capsys.readouterr().err
    assert T.main(["--data-dir"]) == 2
    assert T.main(["--help"]) == 0 and "blurflag-train" in capsys.readouterr().out
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    good = _fake_python(venv / "bin", 'echo \'{"ok": true, "message": "ok", "version": "0.1.0"}\'')
    good.rename(venv / "bin" / "python")
    assert T.main(["--data-dir", str(tmp_path), "--trainer-python", str(venv), "--status"]) == 0
    assert f"configured: {venv / 'bin' / 'python'}" in capsys.readouterr().out
    # The default location under the data folder, where install-trainer.sh puts it.
    venv.rename(tmp_path / "trainer")
    assert T.main(["--data-dir", str(tmp_path), "--status"]) == 0
    assert "installed:" in capsys.readouterr().out


def test_launcher_forwards_arguments_and_exit_code(tmp_path: Path) -> None:
    """With a working trainer Python, `blurflag-train ARGS` runs `python -I -m trainer.cli ARGS`."""
    log = tmp_path / "argv"
    fake = _fake_python(tmp_path, f"""
case "$2" in -c) echo '{{"ok": true, "message": "ok", "version": "0.1.0"}}'; exit 0 ;; esac
echo "$@" > {log}
exit 7""")
    rc = T.main(["--data-dir", str(tmp_path), "--trainer-python", str(fake), "run", "src", "--epochs", "1"])
    assert rc == 7
    assert log.read_text().split() == ["-I", "-m", "trainer.cli", "run", "src", "--epochs", "1"]


def test_module_imports_neither_qt_nor_the_training_stack() -> None:
    """The packaged launcher (and the desktop's check) must stay free of Qt, torch and the trainer package."""
    code = ("import sys, engine.trainer_env; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'trainer', 'torch', 'ultralytics', 'cv2')); "
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
