"""Desktop test fixtures: settings in tmp_path, the real bundled classifier, generated photos, strict thread checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

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
def classifier():
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
def make_window(qtbot, settings: S.Settings) -> Iterator[Callable[..., object]]:
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


class FakeClassifier:
    """A stand-in for verdict-dependent GUI tests: the class comes from the file name's prefix.

    `motion_*.jpg` -> motion_blurred, `defocus_*` -> defocused_blurred, `subject_*` -> defocused_object_portrait,
    anything else -> sharp. Unreadable files give the engine's own error message. Injected explicitly.
    """

    names = ("sharp", "defocused_object_portrait", "defocused_blurred", "motion_blurred")
    blur_types = ("defocused_object_portrait", "defocused_blurred", "motion_blurred")
    decision_rule = "the file name's prefix"
    _PREFIX: ClassVar[dict[str, str]] = {"motion": "motion_blurred", "defocus": "defocused_blurred", "subject": "defocused_object_portrait"}

    def __init__(self, model_dir: Path) -> None:
        import json
        from types import SimpleNamespace

        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "fake.onnx").write_bytes(b"fake model for GUI tests")
        (model_dir / "class_names.json").write_text(json.dumps(list(self.names)))
        self.info = SimpleNamespace(onnx_path=model_dir / "fake.onnx", names=self.names)

    def label_for(self, path: str) -> str:
        return self._PREFIX.get(Path(path).name.split("_", 1)[0], "sharp")

    def classify(self, path: str, blur_type: str | None = None):
        from engine.errors import UnreadableImageError
        from engine.preprocess import open_image
        from engine.results import Classification, ImageResult

        try:
            open_image(path)
        except UnreadableImageError as exc:
            return ImageResult(str(path), None, str(exc), blur_type)
        label = self.label_for(path)
        probs = [0.85 if n == label else 0.05 for n in self.names]
        return ImageResult(str(path), Classification.from_probabilities(self.names, probs), None, blur_type)

    def classify_paths(self, paths, blur_type=None, workers=None, batch_size=8):
        return (self.classify(p, blur_type) for p in paths)


@pytest.fixture
def fake_classifier(tmp_path: Path) -> FakeClassifier:
    return FakeClassifier(tmp_path / "fake-model")
