"""BlurFlag's main window: watched folders, the results table, the detail pane, actions, and the trainer tab."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QIcon,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from desktop import file_actions as FA
from desktop import settings as S
from desktop.detail_pane import DetailPane
from desktop.inference_worker import InferenceWorker, Outcome
from desktop.results_view import (
    FlaggedFilter,
    PathRole,
    ResultsModel,
    ResultsView,
    Row,
    ThumbnailLoader,
    nice_name,
    selected_paths,
)
from desktop.trainer_tab import TrainerTab
from desktop.watch_bridge import WatchBridge
from engine.errors import EngineError
from engine.paths import resource_path

if TYPE_CHECKING:
    from engine.actions import ActionJournal, FileAction
    from engine.model import BlurClassifier
    from engine.store import ResultStore

APP_TITLE = "BlurFlag"
log = logging.getLogger(__name__)
_RATE_WINDOW = 5.0  # seconds over which images per second are measured


def model_id(classifier: BlurClassifier) -> str:
    """A short fingerprint of a model's files: results are stored per model."""
    from engine.store import model_fingerprint

    return model_fingerprint(classifier.info.onnx_path.parent)


def verdict_id(mid: str, classifier: BlurClassifier) -> str:
    """The model's files (`mid`, from `model_id`) and the engine's decision rule: results of another rule are stale.

    An engine that decides differently with the same model (e.g. the quadrant check of engine.tiles) opens the same
    result file, drops the old verdicts and keeps the user's overrides.
    """
    return f"{mid} {classifier.decision_rule}"


class MainWindow(QMainWindow):
    """The application window; owns the worker, the watcher bridge, the store and the trainer tab."""

    model_changed = Signal(object)  # str model folder, or None for the bundled one

    def __init__(
        self,
        settings: S.Settings,
        model_dir: str | None = None,
        classifier: BlurClassifier | None = None,
        trainer_availability: Callable[[], tuple[bool, str]] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle(APP_TITLE)
        icon = resource_path("icon.png")
        if icon.exists():
            self.setWindowIcon(QIcon(str(icon)))
        self.setAcceptDrops(True)
        self._closed = False
        self._tasks: list[FA.BackgroundTask] = []
        self._retired_stores: list[ResultStore] = []
        self.undo_stack: list[ActionJournal] = []
        self._rate_times: deque[float] = deque()
        self._waiting = 0
        self._run_done = 0
        self._focus_path: str | None = None
        self.messages: list[str] = []  # status messages, newest last (also for tests)
        self.task_errors: list[str] = []  # actions that failed as a whole

        self.classifier: BlurClassifier | None = None
        self.store: ResultStore | None = None
        self.model_dir: str | None = None
        self._model_error = ""
        if classifier is not None:
            self.classifier = classifier
        else:
            self._load_model(model_dir if model_dir is not None else (settings.get(S.MODEL_DIR) or None))
        if self.classifier is not None:
            self.store = self._open_store(self.classifier)

        self.thumbs = ThumbnailLoader(parent=self)
        self.model = ResultsModel(self.thumbs, self)
        self.proxy = FlaggedFilter(self)
        self.proxy.setSourceModel(self.model)
        self.worker = InferenceWorker(self.classifier, self.store, parent=self)
        self.bridge = WatchBridge(self)
        self.view = ResultsView()
        self.view.setModel(self.proxy)
        self.detail = DetailPane()
        self.trainer_tab = TrainerTab(settings, self._all_overrides, trainer_availability)

        self._build_ui()
        self._build_actions()
        self._connect()
        self._restore_settings()

        self.thumbs.start()
        self.detail.start()
        self.worker.start()
        self._status_timer = QTimer(self)
        self._status_timer.setInterval(500)
        self._status_timer.timeout.connect(self._update_status)
        self._status_timer.start()
        if self.store is not None:
            self.model.set_overrides(self._safe(self.store.overrides, {}))
        self._update_status()
        self._update_model_label()
        if self.classifier is None:
            self.show_message(f"No model loaded: {self._model_error}")
        if settings.get(S.WATCHING) and self.folders():
            QTimer.singleShot(0, self.start_watching)

    # -- model and store -------------------------------------------------------------------------

    def _load_model(self, model_dir: str | None) -> None:
        from engine.model import load_classifier

        try:
            self.classifier = load_classifier(model_dir)
            self.model_dir = model_dir
            return
        except EngineError as exc:
            self._model_error = str(exc)
        if model_dir is not None:  # a user model that went missing: fall back to the bundled one
            try:
                self.classifier = load_classifier(None)
                self.model_dir = None
                self._model_error = f"your model could not be loaded ({self._model_error}); using the bundled model"
            except EngineError as exc:
                self._model_error = str(exc)

    def _open_store(self, classifier: BlurClassifier) -> ResultStore | None:
        """The result database of this model (one file per model, so switching back finds its results)."""
        from engine.store import ResultStore

        mid = model_id(classifier)
        try:
            path = self.settings.data_dir / "results" / f"{mid}.sqlite3"
            return ResultStore(path, model_id=verdict_id(mid, classifier))
        except Exception as exc:  # a locked or newer database must not keep the app from classifying  # noqa: BLE001
            self._model_error = f"results will not be kept: {exc}"
            return None

    def use_model(self, model_dir: str | None) -> bool:
        """Switch to a model folder (None: the bundled model); results are re-checked with it."""
        from engine.model import load_classifier

        try:
            classifier = load_classifier(model_dir)
        except EngineError as exc:
            self.show_message(f"Cannot use this model: {exc}", error=True)
            return False
        overrides = self._all_overrides()
        store = self._open_store(classifier)
        if store is not None:  # overrides belong to the photos, not to a model: carry them over
            def sync() -> None:
                for path in set(store.overrides()) - set(overrides):
                    store.set_override(path, None)
                for path, label in overrides.items():
                    store.set_override(path, label)

            self._safe(sync, None)
        old_store, self.store = self.store, store
        if old_store is not None:
            self._retired_stores.append(old_store)  # the batch in flight may still write to it
        self.classifier, self.model_dir = classifier, model_dir
        paths = [r.path for r in self.model.rows()]
        self.worker.clear()
        self.worker.set_classifier(classifier, store)
        self.model.clear()
        self.model.set_overrides(overrides)
        self._reset_progress()
        self._submit(paths)
        self.settings.set(S.MODEL_DIR, model_dir or "")
        self._populate_blur_types()
        self._update_model_label()
        self.trainer_tab.set_current_model(model_dir)
        self.show_message(f"Using {'model ' + model_dir if model_dir else 'the bundled model'}")
        self.model_changed.emit(model_dir)
        return True

    def _all_overrides(self) -> dict[str, str]:
        if self.store is None:
            return {r.path: r.override for r in self.model.rows() if r.override} if hasattr(self, "model") else {}
        return self._safe(self.store.overrides, {})

    def _safe(self, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            self.show_message(f"Result database error: {exc}", error=True)
            return default

    # -- layout ----------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        # Folders panel
        self.folder_list = QListWidget()
        self.folder_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.folder_list.setToolTip("Folders BlurFlag watches for new photos")
        self.folder_list.setTextElideMode(Qt.TextElideMode.ElideLeft)
        self.folder_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.folder_list.setUniformItemSizes(True)
        self.add_folder_button = QPushButton("Add…")
        self.remove_folder_button = QPushButton("Remove")
        self.recursive_box = QCheckBox("Include subfolders")
        self.polling_box = QCheckBox("Poll (network/removable drives)")
        self.polling_box.setToolTip("Check the folders every few seconds instead of relying on change events")
        self.watch_button = QPushButton("Start watching")
        self.watch_button.setCheckable(True)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setEnabled(False)
        folder_buttons = QHBoxLayout()
        folder_buttons.addWidget(self.add_folder_button)
        folder_buttons.addWidget(self.remove_folder_button)
        watch_buttons = QHBoxLayout()
        watch_buttons.addWidget(self.watch_button)
        watch_buttons.addWidget(self.pause_button)
        folders_box = QGroupBox("Watched folders")
        fl = QVBoxLayout(folders_box)
        fl.addWidget(self.folder_list, 1)
        fl.addLayout(folder_buttons)
        fl.addWidget(self.recursive_box)
        fl.addWidget(self.polling_box)
        fl.addLayout(watch_buttons)

        self.blur_combo = QComboBox()
        self.flagged_box = QCheckBox("Show flagged only")
        flag_box = QGroupBox("Flag")
        fb = QVBoxLayout(flag_box)
        fb.addWidget(QLabel("Blur type:"))
        fb.addWidget(self.blur_combo)
        fb.addWidget(self.flagged_box)
        keys = QLabel(
            "<small><b>Keys</b><br>P sharp · X blurred<br>1/2/3 blur type · U unmark<br>"
            "↑↓ move · Space preview<br>F focus overlay</small>"
        )
        keys.setTextFormat(Qt.TextFormat.RichText)
        fb.addWidget(keys)

        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(folders_box, 1)
        sl.addWidget(flag_box)
        side.setMinimumWidth(210)
        side.setMaximumWidth(260)
        self.side_panel = side

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(self.detail)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([800, 420])

        self.cull = QWidget()
        cl = QHBoxLayout(self.cull)
        cl.setContentsMargins(6, 6, 6, 6)
        cl.addWidget(side)
        cl.addWidget(self.splitter, 1)

        self.tabs = QTabWidget()
        self.tabs.addTab(self.cull, "Cull")
        self.tabs.addTab(self.trainer_tab, "Train")
        self.setCentralWidget(self.tabs)

        # Status bar
        self.counts_label = QLabel()
        self.rate_label = QLabel()
        self.rate_label.setMinimumWidth(self.rate_label.fontMetrics().horizontalAdvance("000.0 img/s") + 6)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setFormat("%v / %m")
        self.progress.setVisible(False)
        self.watch_label = QLabel("Not watching")
        self.model_label = QLabel()
        sb = self.statusBar()
        sb.addPermanentWidget(self.counts_label)
        sb.addPermanentWidget(self.rate_label)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.watch_label)
        sb.addPermanentWidget(self.model_label)
        self.resize(1280, 800)

    def _action(self, text: str, slot: Callable[[], Any],
                shortcut: str | QKeySequence | QKeySequence.StandardKey | None = None,
                tip: str = "", widget: QWidget | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        if widget is not None:  # single-key culling shortcuts work only on the Cull tab
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            widget.addAction(action)
        return action

    def _build_actions(self) -> None:
        c = self.cull
        self.act_add_folder = self._action("Add folder to watch…", self.add_folder_dialog)
        self.act_check_files = self._action("Check photos…", self.check_files_dialog, QKeySequence.StandardKey.Open,
                                            "Check photos now (you can also drop them onto the window)")
        self.act_check_folder = self._action("Check a folder…", self.check_folder_dialog)
        self.act_report = self._action("Save CSV report…", self.save_report_dialog, "Ctrl+Shift+S",
                                       "Save every result as a CSV file")
        self.act_quit = self._action("Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_xmp = self._action("Write XMP sidecars", self.write_xmp_dialog, "Ctrl+Shift+X",
                                    "Rating and blur label for flagged photos, readable by Lightroom, "
                                    "Capture One, darktable and digiKam")
        self.act_embed = QAction("Also embed XMP into JPEGs (changes the files)", self)
        self.act_embed.setCheckable(True)
        self.act_move = self._action("Move flagged to subfolder…", lambda: self.move_flagged_dialog(False),
                                     tip="Move flagged photos into _blurflag/<blur type>/ (can be undone)")
        self.act_copy = self._action("Copy flagged to subfolder…", lambda: self.move_flagged_dialog(True),
                                     tip="Copy flagged photos into _blurflag/<blur type>/ (can be undone)")
        self.act_undo = self._action("Undo last move/copy", self.undo_last, QKeySequence.StandardKey.Undo)
        self.act_export = self._action("Export marked photos as training examples…", self.export_examples_dialog)
        self.act_clear = self._action("Clear list", self.clear_results)

        self.act_sharp = self._action("Mark sharp", lambda: self.mark_selected("sharp"), "P", widget=c)
        self.act_reject = self._action("Mark blurred (chosen type)", self.reject_selected, "X", widget=c)
        self.act_unmark = self._action("Unmark", lambda: self.mark_selected(None), "U", widget=c)
        self.type_actions: list[QAction] = []
        for n in (1, 2, 3):
            self.type_actions.append(
                self._action(f"Mark blur type {n}", partial(self.mark_type, n), str(n), widget=c))
        self.act_preview = self._action("Preview", self.toggle_preview, "Space", widget=c)
        self.act_overlay = self._action("Focus overlay", self.toggle_overlay, "F", widget=c)
        self.act_next = self._action("Next photo", lambda: self.step_selection(1), "Right", widget=c)
        self.act_prev = self._action("Previous photo", lambda: self.step_selection(-1), "Left", widget=c)
        self.act_bundled = self._action("Use bundled model", lambda: self.use_model(None))
        self.act_model_folder = self._action("Use model folder…", self.model_folder_dialog)
        self.act_keys = self._action("Keyboard shortcuts", self.show_keys)

        mb = self.menuBar()
        m = mb.addMenu("&File")
        for a in (self.act_add_folder, self.act_check_files, self.act_check_folder, self.act_report):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Actions")
        for a in (self.act_xmp, self.act_embed):
            m.addAction(a)
        m.addSeparator()
        for a in (self.act_move, self.act_copy, self.act_undo):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_export)
        m.addAction(self.act_clear)
        m = mb.addMenu("&Mark")
        for a in (self.act_sharp, self.act_reject, *self.type_actions, self.act_unmark):
            m.addAction(a)
        m.addSeparator()
        for a in (self.act_prev, self.act_next, self.act_preview, self.act_overlay):
            m.addAction(a)
        m = mb.addMenu("&Model")
        m.addAction(self.act_bundled)
        m.addAction(self.act_model_folder)
        m = mb.addMenu("&Help")
        m.addAction(self.act_keys)

        tb = QToolBar("Main")
        tb.setObjectName("main-toolbar")
        tb.setMovable(False)
        for a in (self.act_check_files, self.act_report, self.act_xmp, self.act_move, self.act_undo):
            tb.addAction(a)
        self.addToolBar(tb)
        self._populate_blur_types()
        self._update_undo()

    def _populate_blur_types(self) -> None:
        current = self.settings.get(S.BLUR_TYPE)
        self.blur_combo.blockSignals(True)
        self.blur_combo.clear()
        types = self.classifier.blur_types if self.classifier is not None else ()
        for t in types:
            self.blur_combo.addItem(nice_name(t), t)
        self.blur_combo.addItem("Show all classes", "")
        i = self.blur_combo.findData(current)
        self.blur_combo.setCurrentIndex(max(i, 0))
        self.blur_combo.blockSignals(False)
        for n, action in enumerate(self.type_actions, start=1):
            name = types[n - 1] if n <= len(types) else None
            action.setText(f"Mark as {nice_name(name)}" if name else f"Mark blur type {n}")
            action.setEnabled(name is not None)
        self._on_blur_type_changed()

    def _connect(self) -> None:
        self.worker.results_ready.connect(self._on_results)
        self.worker.queue_changed.connect(self._on_queue_changed)
        self.worker.error_occurred.connect(lambda m: self.show_message(m, error=True))
        self.bridge.backlog_found.connect(self._on_backlog)
        self.bridge.file_ready.connect(lambda p: self._submit([p]))
        self.bridge.file_moved.connect(self._on_moved)
        self.bridge.file_deleted.connect(self._on_deleted)
        self.bridge.error_occurred.connect(lambda m: self.show_message(m, error=True))
        self.bridge.watching_changed.connect(self._on_watching_changed)
        self.bridge.paused_changed.connect(self._on_watching_changed)
        self.model.counts_changed.connect(self._update_counts)
        self.view.selectionModel().currentRowChanged.connect(self._on_current_changed)
        self.proxy.rowsInserted.connect(self._select_focus_path)
        self.detail.override_requested.connect(self.mark_selected)
        self.detail.reject_requested.connect(self.reject_selected)
        self.detail.navigate_requested.connect(self.step_selection)
        self.detail.close_preview_requested.connect(lambda: self.set_preview_mode(False))
        self.trainer_tab.model_selected.connect(self.use_model)
        self.trainer_tab.set_current_model(self.model_dir)
        self.add_folder_button.clicked.connect(self.add_folder_dialog)
        self.remove_folder_button.clicked.connect(self.remove_selected_folder)
        self.watch_button.toggled.connect(self._on_watch_toggled)
        self.pause_button.toggled.connect(self.set_paused)
        self.recursive_box.toggled.connect(lambda on: self._on_watch_option(S.RECURSIVE, on))
        self.polling_box.toggled.connect(lambda on: self._on_watch_option(S.USE_POLLING, on))
        self.blur_combo.currentIndexChanged.connect(lambda _i: self._on_blur_type_changed())
        self.flagged_box.toggled.connect(self._on_flagged_only)
        self.act_embed.toggled.connect(self._on_embed_toggled)

    def _restore_settings(self) -> None:
        s = self.settings
        for folder in s.get(S.FOLDERS):
            self._add_folder_item(folder)
        for box, option in ((self.recursive_box, S.RECURSIVE), (self.polling_box, S.USE_POLLING),
                            (self.flagged_box, S.FLAGGED_ONLY)):
            box.blockSignals(True)
            box.setChecked(s.get(option))
            box.blockSignals(False)
        self.proxy.set_flagged_only(s.get(S.FLAGGED_ONLY))
        self.act_embed.blockSignals(True)
        self.act_embed.setChecked(s.get(S.EMBED_XMP))
        self.act_embed.blockSignals(False)
        if geometry := s.get(S.GEOMETRY):
            self.restoreGeometry(geometry)
        if state := s.get(S.WINDOW_STATE):
            self.restoreState(state)
        if splitter := s.get(S.SPLITTER):
            self.splitter.restoreState(splitter)
        if header := s.get(S.HEADER):
            self.view.horizontalHeader().restoreState(header)
        self.tabs.setCurrentIndex(min(max(0, s.get(S.TAB)), self.tabs.count() - 1))

    def _save_settings(self) -> None:
        s = self.settings
        s.set(S.FOLDERS, self.folders())
        s.set(S.GEOMETRY, bytes(self.saveGeometry().data()))
        s.set(S.WINDOW_STATE, bytes(self.saveState().data()))
        s.set(S.SPLITTER, bytes(self.splitter.saveState().data()))
        s.set(S.HEADER, bytes(self.view.horizontalHeader().saveState().data()))
        s.set(S.TAB, self.tabs.currentIndex())
        s.sync()

    # -- folders and watching --------------------------------------------------------------------

    def folders(self) -> list[str]:
        """The folders in the watch list."""
        return [self.folder_list.item(i).text() for i in range(self.folder_list.count())]

    def add_folder(self, folder: str | Path) -> bool:
        """Add a folder to the watch list (restarts watching if on)."""
        path = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(path) or path in self.folders():
            return False
        self._add_folder_item(path)
        self.settings.set(S.FOLDERS, self.folders())
        if self.bridge.watching:
            self.start_watching()
        return True

    def _add_folder_item(self, path: str) -> None:
        self.folder_list.addItem(path)
        item = self.folder_list.item(self.folder_list.count() - 1)
        item.setToolTip(path)

    def add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Watch a folder", self.settings.get(S.LAST_DIR))
        if folder:
            self.settings.set(S.LAST_DIR, folder)
            self.add_folder(folder)
            if not self.bridge.watching:
                self.start_watching()

    def remove_selected_folder(self) -> None:
        item = self.folder_list.currentItem()
        if item is None:
            return
        folder = item.text()
        self.folder_list.takeItem(self.folder_list.row(item))
        self.settings.set(S.FOLDERS, self.folders())
        prefix = os.path.realpath(folder) + os.sep
        gone = [r.path for r in self.model.rows() if r.path.startswith(prefix)]
        self.worker.discard(gone)
        for p in gone:
            self.model.remove(p)
        if self.bridge.watching:
            self.start_watching() if self.folders() else self.stop_watching()

    def start_watching(self) -> bool:
        """Start (or restart) watching the listed folders; the backlog is classified first."""
        folders = self.folders()
        if not folders:
            self.show_message("Add a folder to watch first.")
            self._set_watch_button(False)
            return False
        s = self.settings
        ok = self.bridge.start(
            folders,
            recursive=self.recursive_box.isChecked(),
            use_polling=self.polling_box.isChecked(),
            poll_interval=s.get(S.POLL_INTERVAL),
            settle_seconds=s.get(S.SETTLE_SECONDS),
            ignore_dirs=(s.get(S.ACTION_SUBFOLDER),),
        )
        s.set(S.WATCHING, ok)
        self._set_watch_button(ok)
        if ok:
            self._load_journals()
        return ok

    def stop_watching(self) -> None:
        """Stop watching (queued backlog is dropped; results so far are kept)."""
        self.bridge.stop()
        self.worker.set_paused(False)
        self.settings.set(S.WATCHING, False)
        self._set_watch_button(False)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume watching and the backlog (dropped photos are still checked)."""
        if paused:
            self.bridge.pause()
        else:
            self.bridge.resume()
        self.worker.set_paused(paused)
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(paused)
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_button.blockSignals(False)
        self._on_watching_changed()

    def _set_watch_button(self, on: bool) -> None:
        self.watch_button.blockSignals(True)
        self.watch_button.setChecked(on)
        self.watch_button.setText("Stop watching" if on else "Start watching")
        self.watch_button.blockSignals(False)
        self.pause_button.setEnabled(on)
        if not on:
            self.set_paused(False) if self.pause_button.isChecked() else None

    def _on_watch_toggled(self, on: bool) -> None:
        if on:
            self.start_watching()
        else:
            self.stop_watching()

    def _on_watch_option(self, option: S.Option[bool], on: bool) -> None:
        self.settings.set(option, on)
        if self.bridge.watching:
            self.start_watching()

    def _on_watching_changed(self, *_args: Any) -> None:
        if not self.bridge.watching:
            self.watch_label.setText("Not watching")
        elif self.bridge.paused:
            self.watch_label.setText("Paused")
        else:
            n = len(self.bridge.folders)
            self.watch_label.setText(f"Watching {n} folder{'s' if n != 1 else ''}")

    def _on_backlog(self, paths: list[str]) -> None:
        self._submit(paths)
        if paths:
            self.show_message(f"Checking {len(paths)} photos already in the watched folders")

    def _on_moved(self, old: str, new: str) -> None:
        if self.store is not None:
            self._safe(partial(self.store.rename, old, new), None)
        if not self.model.rename(old, new):
            self._submit([new])
        self._refresh_detail()

    def _on_deleted(self, path: str) -> None:
        self.worker.discard([path])
        self.model.remove(path)
        if self.store is not None:
            self._safe(partial(self.store.delete, path), None)

    # -- checking files --------------------------------------------------------------------------

    def _submit(self, paths: Sequence[str], explicit: bool = False) -> int:
        added = self.worker.submit(paths, explicit=explicit)
        self._waiting = self.worker.pending_count()  # the queue_changed signal may still be in flight
        self._update_progress()
        return added

    def check_paths(self, paths: Sequence[str]) -> int:
        """Check files or folders now, ahead of the backlog; the first one is selected when ready."""
        paths = [os.path.realpath(p) for p in paths]
        if not paths:
            return 0
        first = next((p for p in paths if not os.path.isdir(p)), None)
        self._focus_path = first
        if first is not None and (row := self.model.source_row(first)) is not None:
            self._select_source_row(row)
            self._focus_path = None
        n = self._submit(paths, explicit=True)
        self.show_message(f"Checking {len(paths)} dropped item{'s' if len(paths) != 1 else ''}")
        return n

    def check_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Check photos", self.settings.get(S.LAST_DIR),
                                                "Images (*.jpg *.jpeg *.png *.tif *.tiff *.webp *.bmp);;All files (*)")
        if files:
            self.settings.set(S.LAST_DIR, str(Path(files[0]).parent))
            self.check_paths(files)

    def check_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Check a folder", self.settings.get(S.LAST_DIR))
        if folder:
            self.settings.set(S.LAST_DIR, folder)
            self.check_paths([folder])

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _local_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if _local_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = _local_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.tabs.setCurrentWidget(self.cull)
        self.check_paths(paths)

    def _on_results(self, outcomes: list[Outcome]) -> None:
        now = time.monotonic()
        for o in outcomes:
            if not o.cached:
                self._rate_times.append(now)
        self._run_done += len(outcomes)
        self._waiting = max(0, self._waiting - len(outcomes))  # until queue_changed gives the exact count
        self.model.add_outcomes(outcomes)
        self._update_progress()
        current = self.detail.current_path
        if current is not None and any(o.result.path == current for o in outcomes):
            self._refresh_detail()

    def _on_queue_changed(self, pending: int) -> None:
        self._waiting = pending  # here: the paths still waiting (dropped folders count once expanded)
        if pending == 0 and self.worker.is_idle():
            self._reset_progress()
        self._update_progress()

    def _reset_progress(self) -> None:
        self._waiting = self._run_done = 0

    def _update_progress(self) -> None:
        """The bar shows done / (done + waiting) since the queue was last empty."""
        waiting = self._waiting
        busy = waiting > 0
        self.progress.setVisible(busy)
        if busy:
            self.progress.setMaximum(self._run_done + waiting)
            self.progress.setValue(self._run_done)

    def clear_results(self) -> None:
        """Empty the list (stored results stay in the database)."""
        self.model.clear()
        self.detail.show_row(None)

    # -- status ----------------------------------------------------------------------------------

    def show_message(self, text: str, error: bool = False) -> None:
        """Show a message in the status bar (errors stay longer)."""
        self.messages.append(text)
        del self.messages[:-200]
        self.statusBar().showMessage(text, 15000 if error else 5000)

    def images_per_second(self) -> float:
        """Classification rate over the last few seconds."""
        now = time.monotonic()
        while self._rate_times and now - self._rate_times[0] > _RATE_WINDOW:
            self._rate_times.popleft()
        if not self._rate_times:
            return 0.0
        return len(self._rate_times) / _RATE_WINDOW

    def _update_status(self) -> None:
        self._update_counts()
        rate = self.images_per_second()
        self.rate_label.setText(f"{rate:.1f} img/s" if rate else "idle")

    def _update_counts(self) -> None:
        processed, flagged, failed = self.model.counts()
        self.counts_label.setText(f"Processed {processed} · Flagged {flagged} · Failed {failed}")

    def _update_model_label(self) -> None:
        if self.classifier is None:
            self.model_label.setText("No model")
            self.model_label.setToolTip(self._model_error)
        else:
            self.model_label.setText(f"Model: {Path(self.model_dir).name}" if self.model_dir else "Model: bundled")
            self.model_label.setToolTip(self.model_dir or str(self.classifier.info.onnx_path.parent))

    # -- flagging and selection ------------------------------------------------------------------

    @property
    def blur_type(self) -> str | None:
        """The chosen blur type; None in 'show all classes' mode."""
        return self.blur_combo.currentData() or None

    def set_blur_type(self, blur_type: str | None) -> None:
        """Choose a blur type (None: show all classes)."""
        i = self.blur_combo.findData(blur_type or "")
        if i >= 0:
            self.blur_combo.setCurrentIndex(i)

    def _on_blur_type_changed(self) -> None:
        bt = self.blur_type
        if self.blur_combo.count():
            self.settings.set(S.BLUR_TYPE, bt or "")
        self.model.set_blur_type(bt)
        self.act_reject.setText(f"Mark as {nice_name(bt)}" if bt else "Mark as its top blur type")
        self._refresh_detail()

    def set_flagged_only(self, on: bool) -> None:
        """Show only flagged rows."""
        self.flagged_box.setChecked(on)

    def _on_flagged_only(self, on: bool) -> None:
        self.settings.set(S.FLAGGED_ONLY, on)
        self.proxy.set_flagged_only(on)

    def current_row(self) -> Row | None:
        """The row shown in the detail pane."""
        index = self.view.currentIndex()
        if not index.isValid():
            return None
        return self.model.row_for(index.data(PathRole))

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self._refresh_detail()

    def _refresh_detail(self) -> None:
        row = self.current_row()
        self.detail.show_row(row, self.model.verdict(row) if row else "", self.blur_type)

    def _select_source_row(self, source_row: int) -> None:
        index = self.proxy.mapFromSource(self.model.index(source_row, 0))
        if index.isValid():
            self.view.selectionModel().setCurrentIndex(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
            self.view.scrollTo(index)

    def _select_focus_path(self, *_args: Any) -> None:
        if self._focus_path is None:
            return
        row = self.model.source_row(self._focus_path)
        if row is not None:
            self._focus_path = None
            self._select_source_row(row)
            if not self.preview_mode:
                self.view.setFocus()  # the culling keys act on the photo just dropped

    def select_path(self, path: str) -> bool:
        """Select a file's row (for tests and drops)."""
        row = self.model.source_row(path)
        if row is None:
            return False
        self._select_source_row(row)
        return True

    def step_selection(self, delta: int) -> None:
        """Move to the next (+1) or previous (-1) row in view order."""
        n = self.proxy.rowCount()
        if n == 0:
            return
        current = self.view.currentIndex()
        row = current.row() + delta if current.isValid() else (0 if delta > 0 else n - 1)
        row = min(max(row, 0), n - 1)
        index = self.proxy.index(row, 0)
        self.view.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.view.scrollTo(index)

    def mark_selected(self, label: str | None) -> int:
        """Override the verdict of the selected photos (None clears the override)."""
        paths = [p for p in selected_paths(self.view) if (r := self.model.row_for(p)) is not None and r.result.ok]
        if not paths:
            return 0
        if label is not None and self.classifier is not None and label not in self.classifier.names:
            return 0
        for p in paths:
            self._store_override(p, label)
        keep = self.view.currentIndex()
        self.model.set_override(paths, label)
        self._refresh_detail()
        if self.settings.get(S.AUTO_ADVANCE) and len(paths) == 1 and keep.isValid() and not self.proxy.flagged_only:
            self.step_selection(1)
        verb = f"marked as {nice_name(label)}" if label else "unmarked"
        self.show_message(f"{len(paths)} photo{'s' if len(paths) != 1 else ''} {verb}")
        return len(paths)

    def _store_override(self, path: str, label: str | None) -> None:
        store = self.store
        if store is not None:
            self._safe(partial(store.set_override, path, label), None)

    def reject_selected(self) -> int:
        """Mark as blurred: the chosen blur type, or (all-classes mode) each photo's most likely blur type."""
        if self.blur_type:
            return self.mark_selected(self.blur_type)
        if self.classifier is None:
            return 0
        blur_types = self.classifier.blur_types
        total = 0
        for path in selected_paths(self.view):
            row = self.model.row_for(path)
            if row is None or not row.result.ok:
                continue
            probs = row.result.probabilities
            label = max(blur_types, key=lambda t: probs.get(t, 0.0))
            self._store_override(path, label)
            self.model.set_override([path], label)
            total += 1
        self._refresh_detail()
        return total

    def mark_type(self, n: int) -> int:
        """Mark as the n-th blur type (1-based, in the model's order)."""
        types = self.classifier.blur_types if self.classifier is not None else ()
        if not 1 <= n <= len(types):
            return 0
        return self.mark_selected(types[n - 1])

    def toggle_preview(self) -> None:
        """Space: a large preview of the current photo, or back to the list."""
        self.set_preview_mode(self.view.isVisible())

    def set_preview_mode(self, on: bool) -> None:
        """Show the detail pane alone (True) or beside the list."""
        self.view.setVisible(not on)
        self.side_panel.setVisible(not on)
        self.splitter.refresh()
        layout = self.cull.layout()
        if layout is not None:
            layout.activate()
        if on:
            if self.current_row() is None:
                self.step_selection(1)
            self.detail.setFocus()
        else:
            self.view.setFocus()

    @property
    def preview_mode(self) -> bool:
        return not self.view.isVisible() and self.detail.isVisible()

    def toggle_overlay(self) -> None:
        """F: focus overlay on or off."""
        self.detail.set_overlay_enabled(not self.detail.overlay_box.isChecked())

    def show_keys(self) -> None:
        QMessageBox.information(
            self, "Keyboard shortcuts",
            "P  mark sharp (pick)\nX  mark blurred as the chosen blur type (reject)\n1/2/3  mark as a blur type\n"
            "U  unmark\n↑ ↓ ← →  previous / next photo\nSpace  large preview\nF  focus overlay\n"
            "Ctrl+Z  undo the last move or copy")

    # -- actions ---------------------------------------------------------------------------------

    def _confirm(self, title: str, text: str) -> bool:
        """Ask before anything touches the user's files."""
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Ok
                                      | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Ok

    def _run_task(self, name: str, fn: Callable[[], FA.Summary],
                  on_done: Callable[[FA.Summary], None] | None = None, hold_watch: bool = False) -> FA.BackgroundTask:
        """Run an action off the GUI thread; watcher events wait until its results are applied."""
        task = FA.BackgroundTask(name, fn, self)
        held = hold_watch and self.bridge.watching and not self.bridge.paused
        if held:
            self.bridge.pause()

        def finish(result: object) -> None:
            if isinstance(result, FA.Summary):
                if on_done is not None:
                    on_done(result)
                self.show_message(result.message(), error=bool(result.errors))
                if result.errors:
                    self._show_problems(result)
            self._end_task(task, held)

        def fail(message: str) -> None:
            self.task_errors.append(message)
            self.show_message(message, error=True)
            self._end_task(task, held)

        task.finished.connect(finish)
        task.failed.connect(fail)
        self._tasks.append(task)
        self._set_actions_enabled(False)
        task.start()
        return task

    def _end_task(self, task: FA.BackgroundTask, held: bool) -> None:
        task.join(5.0)
        if task in self._tasks:
            self._tasks.remove(task)
        if held and self.bridge.watching and not self.pause_button.isChecked():
            self.bridge.resume()
        self._set_actions_enabled(not self._tasks)

    def _show_problems(self, summary: FA.Summary) -> None:
        """A non-modal report of the files an action skipped (the rest was done)."""
        box = QMessageBox(QMessageBox.Icon.Warning, APP_TITLE, summary.message(), QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setModal(False)
        box.show()
        self.problem_box = box

    def tasks_running(self) -> bool:
        """Whether an action is still running."""
        return bool(self._tasks)

    def _set_actions_enabled(self, on: bool) -> None:
        for a in (self.act_xmp, self.act_move, self.act_copy, self.act_report, self.act_export):
            a.setEnabled(on)
        self._update_undo(on)

    def _update_undo(self, enabled: bool = True) -> None:
        self.act_undo.setEnabled(enabled and bool(self.undo_stack))
        if self.undo_stack:
            j = self.undo_stack[-1]
            op = "copy" if j.actions and j.actions[0].op == "copy" else "move"
            self.act_undo.setText(f"Undo {op} of {len(j.actions)} photo{'s' if len(j.actions) != 1 else ''}")
        else:
            self.act_undo.setText("Undo last move/copy")

    def write_xmp_dialog(self) -> None:
        rows = self.model.rows()
        n = len(FA.flagged_rows(rows, self.blur_type))
        embed = self.act_embed.isChecked()
        text = f"Write XMP sidecars (rating and blur label) for {n} flagged photo{'s' if n != 1 else ''}?"
        if embed:
            text += ("\n\nXMP will also be EMBEDDED into the JPEG files themselves (every other byte of their "
                     "metadata is kept; the files are replaced atomically).")
        if n and self._confirm("Write XMP", text):
            self.write_xmp(embed)

    def write_xmp(self, embed: bool | None = None) -> FA.BackgroundTask:
        """Write sidecars (and, with the opt-in, embedded XMP) for the flagged photos."""
        embed = self.act_embed.isChecked() if embed is None else embed
        rows, bt, rating = self.model.rows(), self.blur_type, self.settings.get(S.FLAGGED_RATING)
        store = self.store
        return self._run_task("xmp", lambda: FA.write_xmp(rows, bt, rating, embed, store), hold_watch=True)

    def _on_embed_toggled(self, on: bool) -> None:
        if on and not self._confirm(
            "Embed XMP into JPEGs",
            "Lightroom reads only XMP embedded in JPEGs. With this option, 'Write XMP' also rewrites the JPEG "
            "files themselves (atomically, keeping all other metadata). Turn it on?",
        ):
            self.act_embed.blockSignals(True)
            self.act_embed.setChecked(False)
            self.act_embed.blockSignals(False)
            return
        self.settings.set(S.EMBED_XMP, on)

    def save_report_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save CSV report",
                                              str(Path(self.settings.get(S.LAST_DIR) or Path.home()) / "blurflag.csv"),
                                              "CSV (*.csv)")
        if path:
            self.save_report(path)

    def save_report(self, path: str) -> FA.BackgroundTask:
        """Write every stored result (or, without a database, the list) to a CSV file."""
        store, bt = self.store, self.blur_type
        rows = [r.result for r in self.model.rows()]
        return self._run_task("report", lambda: FA.write_report(store.all() if store else rows, path, bt))

    def move_flagged_dialog(self, copy: bool) -> None:
        groups = FA.group_by_type(self.model.rows(), self.blur_type)
        n = sum(len(v) for v in groups.values())
        if not n:
            self.show_message("No flagged photos to " + ("copy" if copy else "move"))
            return
        sub = self.settings.get(S.ACTION_SUBFOLDER)
        verb = "Copy" if copy else "Move"
        if self._confirm(f"{verb} flagged photos",
                         f"{verb} {n} flagged photo{'s' if n != 1 else ''} into {sub}/<blur type>/ beside them?\n"
                         "Existing files are never overwritten, and this can be undone (Ctrl+Z)."):
            self.move_flagged(copy)

    def move_flagged(self, copy: bool = False) -> FA.BackgroundTask | None:
        """Move or copy the flagged photos into `<folder>/_blurflag/<blur type>/`."""
        groups = FA.group_by_type(self.model.rows(), self.blur_type)
        if not groups:
            return None
        sub, store = self.settings.get(S.ACTION_SUBFOLDER), self.store

        def work() -> FA.Summary:
            summary = FA.move_flagged(groups, copy, sub)
            if not copy and store is not None and summary.journal is not None:
                for a in summary.journal.actions:
                    store.rename(a.source, a.dest)
            return summary

        def done(summary: FA.Summary) -> None:
            if summary.journal is None or not summary.journal.actions:
                return
            if not copy:
                for a in summary.journal.actions:
                    self.model.rename(a.source, a.dest)
            self.undo_stack.append(summary.journal)
            self._update_undo()
            self._refresh_detail()

        return self._run_task("move", work, done, hold_watch=True)

    def undo_last(self) -> FA.BackgroundTask | None:
        """Undo the last move or copy (also one made before a restart)."""
        if not self.undo_stack or self._tasks:
            return None
        journal = self.undo_stack.pop()
        store = self.store

        def restored(a: FileAction) -> bool:
            return a.op == "move" and os.path.lexists(a.source) and not os.path.lexists(a.dest)

        def work() -> FA.Summary:
            summary = FA.undo(journal)
            if store is not None:
                for a in journal.actions:
                    if restored(a):
                        store.rename(a.dest, a.source)
            return summary

        def done(summary: FA.Summary) -> None:
            for a in journal.actions:
                if restored(a):
                    self.model.rename(a.dest, a.source)
            if summary.errors:  # what could not be undone stays undoable (its journal file is kept)
                left = tuple(a for a in journal.actions if os.path.lexists(a.dest))
                if left:
                    self.undo_stack.append(replace(journal, actions=left))
            self._update_undo()
            self._refresh_detail()

        self._update_undo()
        return self._run_task("undo", work, done, hold_watch=True)

    def _load_journals(self) -> None:
        """Moves made in an earlier session can be undone too."""
        try:
            from engine.actions import load_journals
        except ImportError:
            return
        known = {p for j in self.undo_stack for p in (j.journal_paths or (j.journal_path,))}
        found: list[ActionJournal] = []
        for folder in self.folders():
            try:
                found += [j for j in load_journals(folder, self.settings.get(S.ACTION_SUBFOLDER))
                          if j.journal_path not in known and j.actions]
                known.update(j.journal_path for j in found)
            except Exception as exc:  # noqa: BLE001
                self.show_message(f"cannot read the undo journal in {folder}: {exc}", error=True)
        if found:
            self.undo_stack[:0] = found
            self._update_undo()

    def export_examples_dialog(self) -> None:
        overrides = self._all_overrides()
        if not overrides:
            self.show_message("Mark some photos first (P, X, 1/2/3): marked photos become training examples.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export marked photos into", self.settings.get(S.LAST_DIR))
        if folder:
            self.export_examples(folder)

    def export_examples(self, out_dir: str) -> FA.BackgroundTask:
        """Copy the marked photos into `out_dir/<class>/` for the trainer."""
        overrides = self._all_overrides()
        return self._run_task("export", lambda: FA.export_examples(overrides, out_dir))

    def model_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (blurflag.onnx + class_names.json)",
                                                  str(self.settings.user_models_dir))
        if folder:
            self.use_model(folder)

    # -- shutdown --------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._closed and self.trainer_tab.process.running and not self._confirm(
            "Quit BlurFlag", "A training run is still going on. Cancel it and quit?"
        ):
            event.ignore()
            return
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the watcher, the workers and the trainer, and close the database; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._status_timer.stop()
        self._save_settings()
        self.trainer_tab.shutdown()
        self.bridge.stop()
        self.worker.stop()
        for task in list(self._tasks):
            task.join(30.0)
        self.thumbs.stop()
        self.detail.shutdown()
        for store in [self.store, *self._retired_stores]:
            if store is not None:
                try:
                    store.close()
                except Exception as exc:  # noqa: BLE001 - closing must go on for the other stores
                    log.warning("cannot close the result database: %s", exc)
        self.store = None
        self._retired_stores.clear()


def _local_paths(mime: Any) -> list[str]:
    if mime is None or not mime.hasUrls():
        return []
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]
