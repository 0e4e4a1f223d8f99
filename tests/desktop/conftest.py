"""Desktop test fixtures: settings in tmp_path, the real bundled classifier, generated photos, strict thread checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop import settings as S

# Threads a test of the GUI may leave behind: none of ours. Qt's own threads are not Python threads;
# `_DummyThread`s are Qt threads that once ran Python code and are never removed by Python 3.11.
_GRACE_S = 5.0


@pytest.fixture(autouse=True)
def _no_desktop_threads() -> Iterator[None]:
    """Stricter than the top-level check: daemon threads (the watcher's) must be joined too."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _GRACE_S
    leaked = []
    for thread in set(threading.enumerate()) - before:
        if isinstance(thread, threading._DummyThread):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            leaked.append(thread.name)
    assert not leaked, f"desktop test left threads running: {leaked}"


@pytest.fixture
def settings(tmp_path: Path) -> S.Settings:
    """Settings in an INI under tmp_path, app data folder under tmp_path, short settle time."""
    s = S.Settings(tmp_path / "settings" / "blurflag.ini", tmp_path / "appdata")
    s.set(S.SETTLE_SECONDS, 0.3)
    s.set(S.POLL_INTERVAL, 0.5)
    s.set(S.AUTO_ADVANCE, False)
    return s


@pytest.fixture(scope="session")
def classifier():  # noqa: ANN201 - the engine's BlurClassifier
    """The real bundled classifier (one ONNX session shared by the session's tests)."""
    from engine import load_classifier

    return load_classifier()


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (240, 160), quality: int = 88) -> Path:
    """A small textured JPEG (different content per seed)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR if seed % 2 else Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=quality)
    return path


def jpeg_bytes(seed: int, size: tuple[int, int] = (240, 160)) -> bytes:
    """The bytes of a generated JPEG."""
    import io

    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).resize((w, h), Image.Resampling.NEAREST).save(buf, "JPEG", quality=88)
    return buf.getvalue()


@pytest.fixture
def make_window(qtbot, settings: S.Settings) -> Iterator[Callable[..., object]]:  # noqa: ANN001
    """Build MainWindows that are shut down (threads joined) at the end of the test."""
    from desktop.main_window import MainWindow

    windows: list[MainWindow] = []

    def make(**kwargs: object) -> MainWindow:
        kwargs.setdefault("settings", settings)
        window = MainWindow(**kwargs)  # type: ignore[arg-type]
        qtbot.addWidget(window)
        windows.append(window)
        return window

    yield make
    for w in windows:
        w.shutdown()
