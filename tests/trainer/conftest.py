"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ultralytics_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ultralytics offline with a private settings folder for one test module; the environment is restored after."""
    from trainer.env import configure_offline

    saved = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")}
    configure_offline(tmp_path_factory.mktemp("yolo"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def _keep_signal_handlers() -> Iterator[None]:
    """`blurflag-train` installs SIGINT/SIGTERM handlers; give pytest its own back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
