"""PySide6 must not leak or drop references to Python's singletons.

PySide6-Essentials 6.12.0 decremented True's reference count on every `Signal.emit()` and None's on every
`QCoreApplication.processEvents()`: the app aborted ("deallocating True or False") after a few thousand results.
pyproject.toml keeps that version out; this test fails if a version with the same bug gets installed.
"""

from __future__ import annotations

import sys
import threading

from PySide6.QtCore import QCoreApplication, QObject, Signal

N = 500


class _Emitter(QObject):
    number = Signal(int)
    items = Signal(list)


def _counts() -> tuple[int, int, int]:
    return sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)


def _drift(before: tuple[int, int, int]) -> list[int]:
    return [b - a for a, b in zip(before, _counts(), strict=True)]


def test_emit_and_process_events_keep_singleton_refcounts(qapp) -> None:
    emitter = _Emitter()
    got: list[object] = []
    emitter.number.connect(got.append)
    emitter.items.connect(got.append)
    before = _counts()
    for i in range(N):
        emitter.number.emit(i)
        emitter.items.emit([None, True, False])
        QCoreApplication.processEvents()
    got.clear()
    assert all(abs(d) < N // 10 for d in _drift(before)), f"None/True/False refcount drift {_drift(before)}"


def test_queued_signals_from_a_thread_keep_singleton_refcounts(qapp, qtbot) -> None:
    emitter = _Emitter()
    got: list[object] = []
    emitter.items.connect(got.append)  # delivered on this (GUI) thread: a queued connection
    before = _counts()
    t = threading.Thread(target=lambda: [emitter.items.emit([None, True]) for _ in range(N)])
    t.start()
    t.join()
    qtbot.waitUntil(lambda: len(got) == N, timeout=10_000)
    got.clear()
    assert all(abs(d) < N // 10 for d in _drift(before)), f"None/True/False refcount drift {_drift(before)}"
