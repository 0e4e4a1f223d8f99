"""The results table: one row per file, a flagged filter, sorting, and thumbnails loaded off the GUI thread."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QFont, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from desktop.inference_worker import Outcome
from desktop.threads import stop_thread
from engine.model import SHARP
from engine.store import StoredResult

THUMB_SIZE = 48
_NICE_NAMES = {
    "sharp": "Sharp",
    "defocused_object_portrait": "Subject out of focus",
    "defocused_blurred": "Defocused",
    "motion_blurred": "Motion blur",
}
FLAG_BACKGROUND = QColor(255, 222, 214)
ERROR_FOREGROUND = QColor(150, 60, 0)

PathRole = Qt.ItemDataRole.UserRole + 1
SortRole = Qt.ItemDataRole.UserRole + 2
FlaggedRole = Qt.ItemDataRole.UserRole + 3


def nice_name(class_name: str | None) -> str:
    """A class name as the user reads it."""
    if not class_name:
        return ""
    return _NICE_NAMES.get(class_name, class_name.replace("_", " ").capitalize())


@dataclass(frozen=True)
class Row(StoredResult):
    """What the table knows about one file: its stored result (the override included), read for a blur type."""

    @property
    def path(self) -> str:
        return self.result.path

    def flagged(self, blur_type: str | None) -> bool:
        """Flagged for the chosen blur type, or (all-classes mode) for any blur."""
        if not self.result.ok:
            return False
        return self.label == blur_type if blur_type else self.label != SHARP

    @property
    def failed(self) -> bool:
        return not self.result.ok


class Column:
    """Column indices."""

    THUMB, FILE, VERDICT, CONFIDENCE, TYPE_PROB, TOP, TIME = range(7)
    HEADERS = ("", "File", "Verdict", "Confidence", "Type prob.", "Top class", "Time")


class ResultsModel(QAbstractTableModel):
    """Rows keyed by absolute path; at most one row per file."""

    counts_changed = Signal()

    def __init__(self, thumbnails: ThumbnailLoader | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Row] = []
        self._index: dict[str, int] = {}
        self._blur_type: str | None = None
        self._overrides: dict[str, str] = {}
        self._thumbs = thumbnails
        self._thumb_cache: OrderedDict[str, QPixmap | None] = OrderedDict()
        self._thumb_requested: set[str] = set()
        if thumbnails is not None:
            thumbnails.thumbnail_ready.connect(self._on_thumbnail)

    # -- data ------------------------------------------------------------------------------------

    @property
    def blur_type(self) -> str | None:
        return self._blur_type

    def rows(self) -> list[Row]:
        """All rows, in insertion order."""
        return list(self._rows)

    def row_at(self, row: int) -> Row:
        """The row at a source index."""
        return self._rows[row]

    def row_for(self, path: str) -> Row | None:
        """The row of a path, if shown."""
        i = self._index.get(path)
        return self._rows[i] if i is not None else None

    def source_row(self, path: str) -> int | None:
        """The source row number of a path."""
        return self._index.get(path)

    def counts(self) -> tuple[int, int, int]:
        """(processed, flagged, failed)."""
        flagged = sum(1 for r in self._rows if r.flagged(self._blur_type))
        failed = sum(1 for r in self._rows if r.failed)
        return len(self._rows), flagged, failed

    def set_overrides(self, overrides: dict[str, str]) -> None:
        """The user's overrides by path (from the store)."""
        self._overrides = dict(overrides)
        changed = False
        for i, r in enumerate(self._rows):
            if r.override != self._overrides.get(r.path):
                self._rows[i] = replace(r, override=self._overrides.get(r.path))
                changed = True
        if changed:
            self._all_changed()

    def set_override(self, paths: Iterable[str], label: str | None) -> None:
        """Set (or with None clear) the override of some rows."""
        for path in paths:
            if label is None:
                self._overrides.pop(path, None)
            else:
                self._overrides[path] = label
            i = self._index.get(path)
            if i is not None:
                self._rows[i] = replace(self._rows[i], override=label)
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(Column.HEADERS) - 1))
        self.counts_changed.emit()

    def set_blur_type(self, blur_type: str | None) -> None:
        """Change the chosen blur type (None: show all classes); no reclassification is needed."""
        if blur_type == self._blur_type:
            return
        self._blur_type = blur_type
        self._all_changed()

    def add_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Insert new rows or update existing ones (a changed file replaces its row)."""
        new: dict[str, Row] = {}  # insertion-ordered; a path twice in one batch keeps its latest result
        for o in outcomes:
            path = o.result.path
            row = Row(o.result, o.size, o.mtime_ns, o.classified_at, self._overrides.get(path))
            i = self._index.get(path)
            if i is None:
                new[path] = row
            else:
                self._rows[i] = row
                self._drop_thumb(path)
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(Column.HEADERS) - 1))
        if new:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
            for r in new.values():
                self._index[r.path] = len(self._rows)
                self._rows.append(r)
            self.endInsertRows()
        self.counts_changed.emit()

    def rename(self, old: str, new: str) -> bool:
        """Follow a moved file; a row already at `new` is replaced."""
        i = self._index.get(old)
        if i is None:
            return False
        if new in self._index:
            self.remove(new)
            i = self._index[old]
        row = self._rows[i]
        self._rows[i] = replace(row, result=replace(row.result, path=new))
        del self._index[old]
        self._index[new] = i
        if old in self._overrides:
            self._overrides[new] = self._overrides.pop(old)
        if old in self._thumb_cache:
            self._thumb_cache[new] = self._thumb_cache.pop(old)
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(Column.HEADERS) - 1))
        return True

    def remove(self, path: str) -> bool:
        """Remove the row of a deleted file."""
        i = self._index.get(path)
        if i is None:
            return False
        self.beginRemoveRows(QModelIndex(), i, i)
        del self._rows[i]
        self._index = {r.path: k for k, r in enumerate(self._rows)}
        self.endRemoveRows()
        self._drop_thumb(path)
        self.counts_changed.emit()
        return True

    def clear(self) -> None:
        """Remove every row."""
        self.beginResetModel()
        self._rows.clear()
        self._index.clear()
        self._thumb_cache.clear()
        self._thumb_requested.clear()
        self.endResetModel()
        self.counts_changed.emit()

    def _all_changed(self) -> None:
        if self._rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(Column.HEADERS) - 1))
        self.counts_changed.emit()

    # -- Qt model interface ----------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(Column.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return Column.HEADERS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            if section == Column.TYPE_PROB:
                return "Probability of the chosen blur type"
            if section == Column.CONFIDENCE:
                return "Probability of the top class"
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        row = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == SortRole:
            return self._sort_key(row, col)
        if role == PathRole:
            return row.path
        if role == FlaggedRole:
            return row.flagged(self._blur_type)
        if role == Qt.ItemDataRole.DecorationRole and col == Column.THUMB:
            return self._thumbnail(row.path)
        if role == Qt.ItemDataRole.SizeHintRole and col == Column.THUMB:
            return QSize(THUMB_SIZE + 8, THUMB_SIZE + 6)
        if role == Qt.ItemDataRole.BackgroundRole and row.flagged(self._blur_type):
            return QBrush(FLAG_BACKGROUND)
        if role == Qt.ItemDataRole.ForegroundRole:
            if row.failed:
                return QBrush(ERROR_FOREGROUND)
            if row.flagged(self._blur_type):
                return QBrush(QColor(20, 20, 20))  # dark on the light flag colour, in any palette
        if role == Qt.ItemDataRole.FontRole and col == Column.VERDICT and (row.flagged(self._blur_type) or row.override):
            font = QFont()
            font.setBold(row.flagged(self._blur_type))
            font.setItalic(row.override is not None)
            return font
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(row)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (Column.CONFIDENCE, Column.TYPE_PROB):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def verdict(self, row: Row) -> str:
        """The verdict text of a row."""
        if row.failed:
            return f"Error: {row.result.error or 'unknown error'}"
        marked = " (marked)" if row.override else ""
        if self._blur_type:
            if row.flagged(self._blur_type):
                return f"Flagged: {nice_name(self._blur_type)}{marked}"
            return f"OK{marked}"
        return f"{nice_name(row.label)}{marked}"

    def _display(self, row: Row, col: int) -> str | None:
        r = row.result
        if col == Column.FILE:
            return os.path.basename(row.path)
        if col == Column.VERDICT:
            return self.verdict(row)
        if col == Column.CONFIDENCE:
            return f"{r.confidence:.0%}" if r.confidence is not None else ""
        if col == Column.TYPE_PROB:
            if not r.ok:
                return ""
            return f"{r.probabilities[self._blur_type]:.0%}" if self._blur_type in r.probabilities else "–"
        if col == Column.TOP:
            return nice_name(r.top_class)
        if col == Column.TIME:
            return _format_time(row.classified_at)
        return None

    def _sort_key(self, row: Row, col: int) -> Any:
        r = row.result
        if col in (Column.THUMB, Column.FILE):
            return os.path.basename(row.path).lower()
        if col == Column.VERDICT:
            # flagged first when sorted descending; errors last
            return (0 if row.failed else 2 if row.flagged(self._blur_type) else 1, r.confidence or 0.0)
        if col == Column.CONFIDENCE:
            return r.confidence if r.confidence is not None else -1.0
        if col == Column.TYPE_PROB:
            return r.probabilities.get(self._blur_type or "", -1.0) if r.ok else -1.0
        if col == Column.TOP:
            return nice_name(r.top_class)
        return row.classified_at

    def _tooltip(self, row: Row) -> str:
        if row.failed:
            return f"{row.path}\n{row.result.error}"
        probs = "\n".join(f"  {nice_name(k)}: {v:.1%}" for k, v in row.result.probabilities.items())
        marked = f"\nMarked by you as: {nice_name(row.override)}" if row.override else ""
        return f"{row.path}\n{probs}{marked}"

    # -- thumbnails ------------------------------------------------------------------------------

    def _thumbnail(self, path: str) -> QPixmap | None:
        if path in self._thumb_cache:
            self._thumb_cache.move_to_end(path)
            return self._thumb_cache[path]
        if self._thumbs is not None and path not in self._thumb_requested:
            self._thumb_requested.add(path)
            self._thumbs.request(path)
        return None

    def _on_thumbnail(self, path: str, image: QImage) -> None:
        self._thumb_requested.discard(path)
        i = self._index.get(path)
        if i is None:
            return
        self._thumb_cache[path] = None if image.isNull() else QPixmap.fromImage(image)
        while len(self._thumb_cache) > 4000:
            self._thumb_cache.popitem(last=False)
        idx = self.index(i, Column.THUMB)
        self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])

    def thumbnail_done(self, path: str) -> bool:
        """Whether the thumbnail of a path was loaded (or found unreadable)."""
        return path in self._thumb_cache

    def _drop_thumb(self, path: str) -> None:
        self._thumb_cache.pop(path, None)
        self._thumb_requested.discard(path)


def _format_time(timestamp: float) -> str:
    if timestamp <= 0:
        return ""
    now = time.localtime()
    t = time.localtime(timestamp)
    if (t.tm_year, t.tm_yday) == (now.tm_year, now.tm_yday):
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d %H:%M", t)


def make_thumbnail(path: str, size: int = THUMB_SIZE) -> QImage:
    """A small upright thumbnail (null QImage when the file cannot be read); safe off the GUI thread."""
    try:
        with Image.open(path) as img:
            if img.format in ("JPEG", "MPO"):
                img.draft("RGB", (size * 2, size * 2))
            img.load()
            oriented = ImageOps.exif_transpose(img) or img
            rgb = oriented.convert("RGB")
    except Exception:  # an unreadable file simply has no thumbnail; its row shows the error  # noqa: BLE001
        return QImage()
    rgb.thumbnail((size, size), Image.Resampling.BILINEAR)
    return pil_to_qimage(rgb)


def pil_to_qimage(img: Image.Image) -> QImage:
    """Copy an RGB PIL image into a QImage that owns its pixels."""
    rgb = img.convert("RGB")
    w, h = rgb.size
    data = rgb.tobytes()
    return QImage(data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ThumbnailLoader(QObject):
    """One background thread decoding thumbnails, newest request first (what is on screen now)."""

    thumbnail_ready = Signal(str, QImage)

    def __init__(self, size: int = THUMB_SIZE, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._size = size
        self._stack: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="blurflag-thumbnails", daemon=False)
            self._thread.start()

    def request(self, path: str) -> None:
        """Ask for a thumbnail; the newest request is served first, old ones are dropped past a limit."""
        with self._cond:
            if path in self._stack:
                self._stack.remove(path)
            self._stack.append(path)
            del self._stack[:-300]
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join the thread."""
        thread, self._thread = self._thread, None
        return stop_thread(self._stop, self._cond, thread, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stack and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                path = self._stack.pop()
            image = make_thumbnail(path, self._size)
            if self._stop.is_set():
                return
            self.thumbnail_ready.emit(path, image)


class FlaggedFilter(QSortFilterProxyModel):
    """Sorts by `SortRole` and can hide every row that is not flagged."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._flagged_only = False
        self.setSortRole(SortRole)
        self.setDynamicSortFilter(True)

    @property
    def flagged_only(self) -> bool:
        return self._flagged_only

    def set_flagged_only(self, on: bool) -> None:
        """Show flagged rows only, or every row."""
        if on != self._flagged_only:
            self.beginFilterChange()
            self._flagged_only = on
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        if not self._flagged_only:
            return True
        model = self.sourceModel()
        return bool(model.data(model.index(source_row, 0, source_parent), FlaggedRole))

    def lessThan(self, left: QModelIndex | QPersistentModelIndex, right: QModelIndex | QPersistentModelIndex) -> bool:
        a, b = left.data(SortRole), right.data(SortRole)
        try:
            return bool(a < b)
        except TypeError:
            return str(a) < str(b)


class ResultsView(QTableView):
    """The results table as configured for culling: whole-row selection, thumbnails, sortable."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSortingEnabled(True)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.verticalHeader().setDefaultSectionSize(THUMB_SIZE + 6)
        self.setDragDropMode(QAbstractItemView.DragDropMode.NoDragDrop)
        self.setAcceptDrops(False)  # drops go to the window, which checks the files

    def setModel(self, model: Any) -> None:
        super().setModel(model)
        header = self.horizontalHeader()
        header.setSectionResizeMode(Column.THUMB, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(Column.THUMB, THUMB_SIZE + 10)
        header.setSectionResizeMode(Column.FILE, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(Column.FILE, 140)
        header.resizeSection(Column.VERDICT, 155)
        for col in (Column.CONFIDENCE, Column.TYPE_PROB):
            header.resizeSection(col, 84)
        header.resizeSection(Column.TOP, 130)
        header.setStretchLastSection(True)
        header.setSortIndicatorShown(True)


def selected_paths(view: QTableView) -> list[str]:
    """Paths of the selected rows, in view order."""
    sel = view.selectionModel()
    if sel is None:
        return []
    rows = sorted({i.row() for i in sel.selectedRows()})
    model = view.model()
    return [model.index(r, 0).data(PathRole) for r in rows]


def existing(paths: Iterable[str]) -> list[str]:
    """The paths that still exist on disk."""
    return [p for p in paths if Path(p).exists()]
