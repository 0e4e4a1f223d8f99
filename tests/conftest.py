"""Test-wide setup: offscreen Qt, no leaked threads, settings and app data under tmp_path."""

from __future__ import annotations

import os

# Before any Qt import: render offscreen (CI has no display). setdefault keeps a developer's choice.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_THREAD_GRACE_S = 5.0


@pytest.fixture(autouse=True)
def _gc_on_main_thread() -> Iterator[None]:
    """Collect garbage only on the main (GUI) thread.

    Python's cyclic GC runs in whichever thread allocates when a threshold is crossed; if that is a worker
    thread and the garbage holds Qt objects from an earlier test, Qt destroys them off the GUI thread and
    crashes (a segfault seen in CI inside watchdog's observer start). The app does the same (desktop.app).
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running (watchdog's `_no_thread_leaks`)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _THREAD_GRACE_S
    leaked: list[threading.Thread] = []
    for thread in set(threading.enumerate()) - before:
        if thread.daemon or isinstance(thread, threading._DummyThread):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))  # threads that are just finishing may end
        if thread.is_alive():
            leaked.append(thread)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every per-user location (config, data, cache) at a fresh temporary folder (napari's `_fresh_settings`).

    Qt's QStandardPaths and QSettings follow the XDG variables on Linux, so nothing a test does reaches
    the real home folder even where a test forgets to pass explicit paths.
    """
    home = tmp_path_factory.mktemp("home")
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache")):
        (home / sub).mkdir()
        monkeypatch.setenv(var, str(home / sub))
    return home
