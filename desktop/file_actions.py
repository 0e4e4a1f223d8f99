"""Acting on results, always explicit: XMP sidecars, opt-in JPEG embedding, CSV report, move/copy with undo.

The functions here do the work (Qt-free, callable from a background thread) and return a summary; the
main window asks for confirmation, runs them through `BackgroundTask` and applies the outcome to the
view and the result store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from desktop.results_view import Row

if TYPE_CHECKING:
    from engine.actions import ActionJournal
    from engine.store import ResultStore

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe"})


@dataclass(frozen=True)
class Summary:
    """What an action did: a count, the files it touched, and per-file errors (the rest went on)."""

    title: str
    done: int = 0
    errors: tuple[str, ...] = ()
    journal: ActionJournal | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        """A short report for the user."""
        text = f"{self.title}: {self.done} done"
        if self.errors:
            shown = "\n".join(self.errors[:10])
            more = f"\n… and {len(self.errors) - 10} more" if len(self.errors) > 10 else ""
            text += f", {len(self.errors)} failed:\n{shown}{more}"
        return text


def flagged_rows(rows: Iterable[Row], blur_type: str | None) -> list[Row]:
    """Rows flagged for the chosen blur type (all blur types in all-classes mode)."""
    return [r for r in rows if r.flagged(blur_type)]


def write_xmp(
    rows: Sequence[Row], blur_type: str | None, rating: int | None, embed: bool, store: ResultStore | None = None
) -> Summary:
    """Write sidecars for flagged rows (rating + blur label); rows marked sharp get their blur label cleared.

    With `embed`, JPEGs also get the XMP packet embedded (atomically; every other byte kept). Embedding
    changes the file's size and mtime, so its stored result is re-keyed to the new version: the pixels
    did not change, and the watcher's "ready" for the rewritten file then needs no new inference.
    """
    from engine import xmp

    done = 0
    errors: list[str] = []
    embedded = 0
    for row in rows:
        if not row.result.ok:
            continue
        flagged = row.flagged(blur_type)
        if flagged:
            label: str | None = xmp.blur_label(row.label or "")
            value: int | None = rating
        elif row.override == "sharp" and _has_blur_label(row.path):
            label, value = "", None  # the user overruled an earlier flag: take our label off
        else:
            continue
        try:
            xmp.write_sidecar(row.path, value, label)
            done += 1
            if embed and Path(row.path).suffix.lower() in JPEG_SUFFIXES:
                xmp.embed_xmp_jpeg(row.path, value, label)
                embedded += 1
                if store is not None:
                    st = os.stat(row.path)
                    store.put(row.result, st.st_size, st.st_mtime_ns)
        except Exception as exc:  # one file's failure never stops the rest  # noqa: BLE001
            errors.append(f"{Path(row.path).name}: {exc}")
    title = "XMP sidecars written" + (f" ({embedded} embedded in JPEGs)" if embed else "")
    return Summary(title, done, tuple(errors), details={"embedded": embedded})


def _has_blur_label(path: str) -> bool:
    from engine import xmp

    try:
        return xmp.read_sidecar(path).get("xmp:Label", "").startswith("Blur")
    except Exception:  # noqa: BLE001
        return False


def group_by_type(rows: Sequence[Row], blur_type: str | None) -> dict[str, list[str]]:
    """Flagged paths by the blur type they are flagged for (the override wins)."""
    groups: dict[str, list[str]] = {}
    for row in flagged_rows(rows, blur_type):
        label = row.label or "unknown"
        groups.setdefault(label, []).append(row.path)
    return groups


def move_flagged(groups: Mapping[str, Sequence[str]], copy: bool, subfolder: str) -> Summary:
    """Move (or copy) flagged files into `<folder>/<subfolder>/<blur type>/`; never overwrites."""
    from engine.actions import move_flagged as engine_move

    journal = engine_move(groups, copy=copy, subfolder=subfolder)
    title = "Copied flagged photos" if copy else "Moved flagged photos"
    return Summary(title, len(journal.actions), tuple(journal.errors), journal)


def undo(journal: ActionJournal) -> Summary:
    """Put moved files back / delete copies; never overwrites."""
    from engine.actions import undo as engine_undo

    errors = engine_undo(journal)
    return Summary("Undone", len(journal.actions) - len(errors), tuple(errors), journal)


def write_report(results: Sequence[Any], path: str, blur_type: str | None) -> Summary:
    """A CSV report of every stored result."""
    from engine.report import write_csv

    n = write_csv(results, path, blur_type)
    return Summary(f"CSV report saved to {path}", n)


def export_examples(labels: Mapping[str, str], out_dir: str) -> Summary:
    """Copy the photos the user marked into class folders the trainer reads."""
    from engine.actions import export_training_examples

    n = export_training_examples(labels, out_dir)
    return Summary(f"Training examples exported to {out_dir}", n)


class BackgroundTask(QObject):
    """Runs one function in a thread and reports its result (or exception) on the GUI thread."""

    finished = Signal(object)  # the function's return value
    failed = Signal(str)

    def __init__(self, name: str, fn: Callable[[], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._fn = fn
        self._thread = threading.Thread(target=self._run, name=f"blurflag-task-{name}", daemon=False)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            result = self._fn()
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(f"{self.name} failed: {exc}")
            return
        self.finished.emit(result)
