"""The trainer tab: runs `python -m trainer.cli run ... --events` in a separate process and shows its progress.

Training never runs in the GUI process: torch, ultralytics and OpenCV stay out of it. The subprocess
prints one JSON object per line (step, log, epoch, metrics, done, error); everything else it prints
(ultralytics' own output on stderr) goes to the log as plain text.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QPointF, QProcess, QProcessEnvironment, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop import settings as S
from desktop.results_view import nice_name
from engine import __version__
from engine.errors import EngineError
from engine.model import read_model_info
from engine.paths import IS_FROZEN, bundle_root, default_model_dir

EXIT_CANCELLED = 130
_CANCEL_GRACE_MS = 20_000  # after SIGTERM the trainer stops between batches; kill only if it hangs
_STEP_SPAN = {"prepare": (0.0, 0.10), "train": (0.10, 0.85), "export": (0.85, 0.92), "evaluate": (0.92, 1.0)}
#: The networks `blurflag-train run --network` trains (trainer.NETWORKS), as the form shows them, with the input size
#: its start decides (None: any; MobileNetV2: 224 px from ImageNet, a BlurFlag model's own size, e.g. 448 px with a fine
#: stem: the trainer reads it from the start, the form only shows it) and its usual epochs.
NETWORKS: dict[str, tuple[str, int | None, int]] = {
    "yolov8n-cls": ("YOLOv8n-cls (ultralytics)", None, 20),
    "mobilenetv2": ("MobileNetV2 (ImageNet start)", 224, 6),
}


@dataclass(frozen=True)
class TrainRequest:
    """Everything one trainer run needs."""

    source: str
    work_dir: str
    model_out: str
    epochs: int = 20
    imgsz: int | None = 224  # None: the start's (MobileNetV2), left to the trainer
    batch: int = 32
    weights: str = ""
    synth_per_class: int = 0
    extra_examples: tuple[str, ...] = ()
    network: str = "yolov8n-cls"


def start_size(weights: str) -> int | None:
    """The input size of the BlurFlag model `weights` names (an .onnx beside its class_names.json), None if it names
    none the engine can read (the form then shows the network's usual size). Asked on every edit of the field: a
    file is read once per modification time (an onnxruntime session, ~50-100 ms for the bundled model)."""
    path = Path(weights)
    try:
        if path.suffix.lower() != ".onnx" or not path.is_file():
            return None
        return _model_size(str(path.resolve()), path.stat().st_mtime_ns)
    except OSError:
        return None


@lru_cache(maxsize=8)
def _model_size(path: str, _mtime_ns: int) -> int | None:
    try:
        info, _session = read_model_info(Path(path).parent)
    except (EngineError, OSError):
        return None
    return info.spec.size if str(info.onnx_path.resolve()) == path else None


def command_line(request: TrainRequest) -> list[str]:
    """The trainer subprocess command for a request."""
    cmd = [
        sys.executable, "-m", "trainer.cli", "run", request.source,
        "--work", request.work_dir, "--model-out", request.model_out,
        "--epochs", str(request.epochs), "--batch", str(request.batch),
    ]  # fmt: skip
    if request.imgsz is not None:
        cmd += ["--imgsz", str(request.imgsz)]
    if request.network != "yolov8n-cls":  # the default, left out so a trainer installed before the option still runs
        cmd += ["--network", request.network]
    if request.weights:
        cmd += ["--weights", request.weights]
    if request.synth_per_class > 0:
        cmd += ["--synth-per-class", str(request.synth_per_class)]
    for extra in request.extra_examples:
        cmd += ["--extra-examples", extra]
    return cmd + ["--events"]


@dataclass
class RunState:
    """What the GUI knows about the current (or last) run."""

    step: str = ""
    epochs: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    model_dir: str | None = None
    error: str | None = None
    exit_code: int | None = None


class TrainerProcess(QObject):
    """Runs one trainer subprocess through QProcess (no extra thread) and parses its JSON-line events."""

    step_started = Signal(str, int, int)  # step, index, total
    log_received = Signal(str)
    epoch_finished = Signal(dict)
    metrics_ready = Signal(dict)
    run_finished = Signal(int, str)  # exit code, model folder ("" unless it succeeded)

    def __init__(
        self,
        command: Callable[[TrainRequest], list[str]] = command_line,
        parent: QObject | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        super().__init__(parent)
        self._command = command
        self._environment = environment  # None: this process's environment (+ the checkout on PYTHONPATH)
        self._proc: QProcess | None = None
        self._stdout_buf = b""
        self._stderr_buf = b""
        self._model_dir = ""
        self._error = ""
        self._cancelled = False
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)

    @property
    def running(self) -> bool:
        """Whether a subprocess is running."""
        return self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning

    @property
    def error(self) -> str:
        """The last error event's message."""
        return self._error

    def start(self, request: TrainRequest) -> None:
        """Start a run; raises RuntimeError if one is running."""
        if self.running:
            raise RuntimeError("a training run is already going on")
        Path(request.work_dir).mkdir(parents=True, exist_ok=True)
        cmd = self._command(request)
        proc = QProcess(self)
        env = QProcessEnvironment() if self._environment is not None else QProcessEnvironment.systemEnvironment()
        for key, value in (self._environment or {}).items():
            env.insert(key, value)
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")
        if not IS_FROZEN and self._environment is None:  # run from a checkout: make `trainer` importable whatever the working folder
            root = str(bundle_root())
            old = env.value("PYTHONPATH", "")
            env.insert("PYTHONPATH", root + (os.pathsep + old if old else ""))
        proc.setProcessEnvironment(env)
        proc.setWorkingDirectory(request.work_dir)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        self._proc = proc
        self._stdout_buf = self._stderr_buf = b""
        self._model_dir = self._error = ""
        self._cancelled = False
        self.log_received.emit("$ " + " ".join(cmd[1:]))
        proc.start(cmd[0], cmd[1:])

    def cancel(self) -> None:
        """Ask the trainer to stop between batches (SIGTERM); kill it only if it does not stop in time."""
        if not self.running or self._proc is None:
            return
        self._cancelled = True
        self.log_received.emit("Cancelling after the current batch…")
        self._proc.terminate()
        self._kill_timer.start(_CANCEL_GRACE_MS)

    def shutdown(self, timeout_ms: int = 15_000) -> None:
        """Stop a running subprocess and wait for it (window closing)."""
        proc = self._proc
        if proc is None:
            return
        if proc.state() != QProcess.ProcessState.NotRunning:
            self._cancelled = True
            proc.terminate()
            if not proc.waitForFinished(timeout_ms):
                proc.kill()
                proc.waitForFinished(5_000)
        self._kill_timer.stop()

    def _kill(self) -> None:
        if self.running and self._proc is not None:
            self.log_received.emit("The trainer did not stop in time; killing it.")
            self._proc.kill()

    def _read_stdout(self) -> None:
        if self._proc is None:
            return
        self._stdout_buf += bytes(self._proc.readAllStandardOutput().data())
        *lines, self._stdout_buf = self._stdout_buf.split(b"\n")
        for line in lines:
            self._handle_line(line.decode("utf-8", "replace").rstrip("\r"))

    def _read_stderr(self) -> None:
        if self._proc is None:
            return
        self._stderr_buf += bytes(self._proc.readAllStandardError().data())
        *lines, self._stderr_buf = self._stderr_buf.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            # ultralytics redraws progress bars with carriage returns: keep the last state of the line
            text = text.rsplit("\r", 1)[-1].strip()
            if text:
                self.log_received.emit(text)

    def _handle_line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self.log_received.emit(line)
            return
        kind = event["event"]
        if kind == "step":
            self.step_started.emit(str(event.get("step", "")), int(event.get("index", 0)), int(event.get("total", 4)))
        elif kind == "log":
            for part in str(event.get("message", "")).splitlines():
                self.log_received.emit(part)
        elif kind == "epoch":
            self.epoch_finished.emit(event)
        elif kind == "metrics":
            self.metrics_ready.emit(event)
        elif kind == "done":
            self._model_dir = str(event.get("model_dir", ""))
        elif kind == "error":
            self._error = str(event.get("message", "unknown error"))
            self.log_received.emit(f"Error: {self._error}")

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self._proc is not None:
            self._error = f"cannot start the trainer: {self._proc.errorString()}"
            self.log_received.emit(self._error)
            self._proc = None
            self.run_finished.emit(1, "")

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        self._kill_timer.stop()
        self._read_stdout()
        self._read_stderr()
        for rest in (self._stdout_buf, self._stderr_buf):
            if rest.strip():
                self._handle_line(rest.decode("utf-8", "replace"))
        self._stdout_buf = self._stderr_buf = b""
        if status == QProcess.ExitStatus.CrashExit:
            exit_code = EXIT_CANCELLED if self._cancelled else (exit_code or 1)
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.deleteLater()
        self.run_finished.emit(exit_code, self._model_dir if exit_code == 0 else "")


class EpochPlot(QWidget):
    """Loss (left axis) and validation top-1 accuracy (right axis, 0-100 %) per epoch, drawn with QPainter."""

    LOSS_COLOR = QColor(200, 80, 40)
    ACC_COLOR = QColor(40, 110, 200)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._epochs: list[dict[str, Any]] = []
        self._total = 0
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 220)

    def clear(self, total: int = 0) -> None:
        """Forget the points; `total` epochs set the x axis."""
        self._epochs, self._total = [], total
        self.update()

    def add(self, event: dict[str, Any]) -> None:
        """Add one epoch event."""
        self._epochs.append(event)
        self._total = max(self._total, int(event.get("epochs") or 0), int(event.get("epoch") or 0))
        self.update()

    def points(self) -> list[dict[str, Any]]:
        return list(self._epochs)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        p.fillRect(self.rect(), pal.base())
        text = pal.text().color()
        left, right, top, bottom = 52, 52, 24, 30
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QPen(QColor(160, 160, 160)))
        p.drawRect(plot)
        font = QFont(p.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        losses = [float(e["loss"]) for e in self._epochs if _finite(e.get("loss"))]
        max_loss = max(losses, default=1.0) * 1.1 or 1.0
        total = max(self._total, len(self._epochs), 1)
        # axes labels
        p.setPen(self.LOSS_COLOR)
        p.drawText(QRectF(0, 2, left + 60, 18), Qt.AlignmentFlag.AlignLeft, "loss")
        p.setPen(self.ACC_COLOR)
        p.drawText(QRectF(self.width() - right - 80, 2, right + 78, 18), Qt.AlignmentFlag.AlignRight, "val. accuracy")
        for frac in (0.0, 0.5, 1.0):
            y = plot.bottom() - frac * plot.height()
            p.setPen(QPen(QColor(200, 200, 200), 1, Qt.PenStyle.DotLine))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(self.LOSS_COLOR)
            p.drawText(QRectF(0, y - 8, left - 6, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"{max_loss * frac:.2f}")
            p.setPen(self.ACC_COLOR)
            p.drawText(QRectF(plot.right() + 6, y - 8, right - 6, 16), Qt.AlignmentFlag.AlignLeft
                       | Qt.AlignmentFlag.AlignVCenter, f"{frac:.0%}")
        p.setPen(text)
        p.drawText(QRectF(plot.left(), plot.bottom() + 4, plot.width(), 20), Qt.AlignmentFlag.AlignCenter,
                   f"epoch (of {total})" if self._epochs else "no epochs yet")

        def x_of(epoch: int) -> float:
            return plot.left() + ((epoch - 0.5) / total) * plot.width()

        for key, color, scale in (("loss", self.LOSS_COLOR, max_loss), ("top1", self.ACC_COLOR, 1.0)):
            pts = [QPointF(x_of(int(e["epoch"])), plot.bottom() - float(e[key]) / scale * plot.height())
                   for e in self._epochs if _finite(e.get(key))]
            if not pts:
                continue
            path = QPainterPath(pts[0])
            for pt in pts[1:]:
                path.lineTo(pt)
            p.setPen(QPen(color, 2))
            p.drawPath(path)
            p.setBrush(color)
            for pt in pts:
                p.drawEllipse(pt, 3, 3)
            p.setBrush(Qt.BrushStyle.NoBrush)
        p.end()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class TrainerTab(QWidget):
    """Form, progress, live log, per-epoch plot, final metrics, and the model switch."""

    model_selected = Signal(object)  # str model folder, or None for the bundled model

    def __init__(
        self,
        settings: S.Settings,
        overrides: Callable[[], dict[str, str]] | None = None,
        availability: Callable[[], tuple[bool, str]] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._settings = settings
        self._overrides = overrides or dict
        if availability is None and IS_FROZEN:
            # The packaged app has no torch: train in the environment install-trainer.sh made (engine.trainer_env).
            from engine import trainer_env

            status = trainer_env.find_trainer(settings.data_dir)
            found = status.env if status.ok else None
            availability = lambda: (status.ok, status.message)  # noqa: E731
            self._trainer_version = status.version
            if found is not None:
                self.process = TrainerProcess(
                    command=lambda req: found.command(command_line(req)[3:]),
                    parent=self,
                    environment=found.environment(os.environ),
                )
        if not hasattr(self, "process"):
            self.process = TrainerProcess(parent=self)
        self.state = RunState()
        self._current_model: str | None = None
        self._started_at = 0.0
        self.process.step_started.connect(self._on_step)
        self.process.log_received.connect(self._on_log)
        self.process.epoch_finished.connect(self._on_epoch)
        self.process.metrics_ready.connect(self._on_metrics)
        self.process.run_finished.connect(self._on_finished)

        if availability is None:
            import trainer  # cheap: it imports neither torch nor ultralytics

            availability = trainer.available
        ok, message = availability()
        self.available = ok
        self._build(ok, message)

    # -- layout ----------------------------------------------------------------------------------

    def _build(self, ok: bool, message: str) -> None:
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if not ok:
            self.notice.setText(
                "<b>Training is not available in this installation.</b><br>"
                f"{message}<br>Classifying photos works without it; the trainer runs as a separate "
                "process once the training extra is installed."
            )
            self.notice.setStyleSheet("background: #fff4d6; color: #222; padding: 8px; border: 1px solid #e0c060;")
        else:
            self.notice.setText(
                "Retrain the blur classifier on your own photos: a folder with one subfolder per class "
                "(sharp, defocused_object_portrait, defocused_blurred, motion_blurred) or the plan's layout. "
                "Training runs in a separate process; the bundled model stays the default."
            )
            installed = getattr(self, "_trainer_version", None)
            if installed and installed != __version__:  # the packaged app's trainer, installed by another version
                self.notice.setText(
                    self.notice.text() + f"<br><b>The installed trainer is BlurFlag {installed}, this app "
                    f"{__version__}:</b> run install-trainer.sh from this app's folder again so they match "
                    "(newer options, such as the MobileNetV2 network, need it)."
                )
                self.notice.setStyleSheet("background: #fff4d6; color: #222; padding: 8px; border: 1px solid #e0c060;")

        self.source_edit = QLineEdit(self._settings.get(S.TRAIN_SOURCE))
        self.source_edit.setPlaceholderText("folder with class subfolders")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_source)
        source_row = QHBoxLayout()
        source_row.addWidget(self.source_edit, 1)
        source_row.addWidget(browse)
        self.network_combo = QComboBox()
        for key, (label, _size, _epochs) in NETWORKS.items():
            self.network_combo.addItem(label, key)
        self.network_combo.setToolTip(
            "YOLOv8n-cls trains through ultralytics at any image size. MobileNetV2 starts from ImageNet weights "
            "at 224 px (or continues from a BlurFlag model's MobileNetV2, such as the bundled model's, at that "
            "model's own size) and needs only a few epochs; it is the network most of the bundled model is made of."
        )
        self.epochs_spin = _spin(1, 500, self._settings.get(S.TRAIN_EPOCHS))
        self.imgsz_spin = _spin(32, 640, self._settings.get(S.TRAIN_IMGSZ), step=32)
        self._own_imgsz = self.imgsz_spin.value()  # the user's size, for a network of any size (a fixed one shows its)
        self.imgsz_spin.valueChanged.connect(self._remember_own_imgsz)
        self.batch_spin = _spin(1, 256, self._settings.get(S.TRAIN_BATCH))
        self.synth_spin = _spin(0, 5000, self._settings.get(S.TRAIN_SYNTH), step=10)
        self.synth_spin.setToolTip("Synthesise this many examples of each blur type from your sharp photos")
        self.overrides_box = QCheckBox("Add my overrides (photos I marked) as examples")
        self.overrides_box.setChecked(self._settings.get(S.TRAIN_OVERRIDES))
        self.weights_edit = QLineEdit(self._settings.get(S.TRAIN_WEIGHTS))
        self.weights_edit.setPlaceholderText("optional .pt or .onnx to start from; empty: from scratch")
        self.start_from_bundled_button = QPushButton("Bundled model")
        self.start_from_bundled_button.setToolTip("Continue training from the model BlurFlag ships with")
        self.start_from_bundled_button.clicked.connect(self._start_from_bundled_model)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.weights_edit, 1)
        weights_row.addWidget(self.start_from_bundled_button)

        form = QFormLayout()
        form.addRow("Training photos:", source_row)
        form.addRow("Network:", self.network_combo)
        form.addRow("Epochs:", self.epochs_spin)
        form.addRow("Image size:", self.imgsz_spin)
        form.addRow("Batch:", self.batch_spin)
        form.addRow("Synthetic per blur type:", self.synth_spin)
        form.addRow("Start weights:", weights_row)
        form.addRow("", self.overrides_box)
        saved = self._settings.get(S.TRAIN_NETWORK)
        self.network_combo.setCurrentIndex(max(0, self.network_combo.findData(saved)))
        self._network = self.network_combo.currentData()
        self._fit_form_to_network()
        self.network_combo.currentIndexChanged.connect(self._on_network_changed)
        self.weights_edit.textChanged.connect(self._fit_form_to_network)

        self.start_button = QPushButton("Start training")
        self.start_button.clicked.connect(self.start_training)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.process.cancel)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)

        setup = QGroupBox("Run")
        setup_layout = QVBoxLayout(setup)
        setup_layout.addLayout(form)
        setup_layout.addLayout(buttons)

        self.step_label = QLabel("Idle")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        mono = QFont("Monospace")
        mono.setStyleHint(QFont.StyleHint.TypeWriter)
        self.log.setFont(mono)
        self.plot = EpochPlot()

        self.metrics_label = QLabel("Per-class recall and the sharp false-positive rate appear here after a run.")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setTextFormat(Qt.TextFormat.RichText)
        self.metrics_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.use_button = QPushButton("Use this model")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self._use_trained)
        self.bundled_button = QPushButton("Use bundled model")
        self.bundled_button.clicked.connect(lambda: self.model_selected.emit(None))
        self.current_label = QLabel("Current model: bundled")
        self.current_label.setWordWrap(True)
        result_box = QGroupBox("Result")
        result_layout = QVBoxLayout(result_box)
        result_layout.addWidget(self.metrics_label, 1)
        model_buttons = QHBoxLayout()
        model_buttons.addWidget(self.use_button)
        model_buttons.addWidget(self.bundled_button)
        model_buttons.addStretch(1)
        result_layout.addLayout(model_buttons)
        result_layout.addWidget(self.current_label)

        grid = QGridLayout()
        grid.addWidget(setup, 0, 0)
        grid.addWidget(result_box, 0, 1)
        grid.addWidget(self.plot, 1, 0)
        grid.addWidget(self.log, 1, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        grid.setRowStretch(1, 1)

        layout = QVBoxLayout(self)
        layout.addWidget(self.notice)
        layout.addWidget(self.step_label)
        layout.addWidget(self.progress)
        layout.addLayout(grid, 1)
        self.set_current_model(None)
        if not ok:
            for w in (setup, self.plot, self.log, self.progress, self.step_label):
                w.setEnabled(False)
            self.start_button.setEnabled(False)

    # -- actions ---------------------------------------------------------------------------------

    def set_current_model(self, model_dir: str | None) -> None:
        """Show which model the app uses now."""
        self._current_model = model_dir
        self.current_label.setText(f"Current model: {model_dir}" if model_dir else "Current model: bundled")
        self.bundled_button.setEnabled(model_dir is not None)

    def _on_network_changed(self) -> None:
        """Another network: its usual epochs (if the form still holds the last network's), its input size."""
        old, new = self._network, self.network_combo.currentData()
        self._network = new
        if self.epochs_spin.value() == NETWORKS[old][2]:
            self.epochs_spin.setValue(NETWORKS[new][2])
        self._fit_form_to_network()

    def _remember_own_imgsz(self, value: int) -> None:
        if self.imgsz_spin.isEnabled():
            self._own_imgsz = value

    def _fit_form_to_network(self) -> None:
        size = NETWORKS[self.network_combo.currentData()][1]
        self.imgsz_spin.setEnabled(size is None)
        if size is not None:
            size = start_size(self.weights_edit.text().strip()) or size
        self.imgsz_spin.setValue(self._own_imgsz if size is None else size)
        self.imgsz_spin.setToolTip(
            f"This network trains at its start's input size: {size} px (224 px from ImageNet weights, a BlurFlag "
            "model's own size from the model)" if size is not None else ""
        )
        start = "ImageNet weights" if self.network_combo.currentData() == "mobilenetv2" else "from scratch"
        self.weights_edit.setPlaceholderText(f"optional .pt or .onnx to start from; empty: {start}")

    def _start_from_bundled_model(self) -> None:
        self.weights_edit.setText(str(default_model_dir() / "blurflag.onnx"))

    def _browse_source(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Training photos", self.source_edit.text())
        if folder:
            self.source_edit.setText(folder)

    def request(self) -> TrainRequest:
        """The run the form describes; fresh work and model folders under the app data folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        work = self._settings.trainer_runs_dir / stamp
        model_out = self._settings.user_models_dir / stamp
        n = 1
        while work.exists() or model_out.exists():
            work = self._settings.trainer_runs_dir / f"{stamp}-{n}"
            model_out = self._settings.user_models_dir / f"{stamp}-{n}"
            n += 1
        extra: tuple[str, ...] = ()
        overrides = self._overrides() if self.overrides_box.isChecked() else {}
        if overrides:
            from engine.actions import export_training_examples

            out = work / "overrides"
            count = export_training_examples(overrides, out)
            self._on_log(f"Added {count} photos you marked as training examples.")
            if count:
                extra = (str(out),)
        return TrainRequest(
            source=self.source_edit.text().strip(),
            work_dir=str(work),
            model_out=str(model_out),
            epochs=self.epochs_spin.value(),
            imgsz=None if NETWORKS[self.network_combo.currentData()][1] is not None else self.imgsz_spin.value(),
            batch=self.batch_spin.value(),
            weights=self.weights_edit.text().strip(),
            synth_per_class=self.synth_spin.value(),
            extra_examples=extra,
            network=self.network_combo.currentData(),
        )

    def start_training(self) -> bool:
        """Start a run from the form; False (with the reason in the step label) if it cannot start."""
        if not self.available or self.process.running:
            return False
        source = self.source_edit.text().strip()
        if not source or not Path(source).is_dir():
            self.step_label.setText("Choose a folder of training photos first.")
            return False
        self._save_form()
        self.log.clear()
        self.plot.clear(self.epochs_spin.value())
        self.state = RunState()
        self.metrics_label.setText("Training…")
        self.use_button.setEnabled(False)
        try:
            req = self.request()
        except Exception as exc:  # exporting overrides failed (disk full, permissions)  # noqa: BLE001
            self.step_label.setText(f"Cannot prepare the run: {exc}")
            return False
        self._started_at = time.monotonic()
        self.process.start(req)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.step_label.setText("Starting the trainer…")
        self.progress.setValue(0)
        return True

    def shutdown(self) -> None:
        """Stop a running trainer (window closing)."""
        self.process.shutdown()

    def _save_form(self) -> None:
        s = self._settings
        s.set(S.TRAIN_SOURCE, self.source_edit.text().strip())
        s.set(S.TRAIN_EPOCHS, self.epochs_spin.value())
        s.set(S.TRAIN_IMGSZ, self._own_imgsz)
        s.set(S.TRAIN_BATCH, self.batch_spin.value())
        s.set(S.TRAIN_SYNTH, self.synth_spin.value())
        s.set(S.TRAIN_OVERRIDES, self.overrides_box.isChecked())
        s.set(S.TRAIN_WEIGHTS, self.weights_edit.text().strip())
        s.set(S.TRAIN_NETWORK, self.network_combo.currentData())

    def _use_trained(self) -> None:
        if self.state.model_dir:
            self.model_selected.emit(self.state.model_dir)

    # -- events ----------------------------------------------------------------------------------

    def _on_step(self, step: str, index: int, total: int) -> None:
        self.state.step = step
        self.step_label.setText(f"Step {index} of {total}: {step}")
        lo, _ = _STEP_SPAN.get(step, (0.0, 1.0))
        self.progress.setValue(int(lo * 1000))

    def _on_log(self, line: str) -> None:
        self.log.appendPlainText(line)

    def _on_epoch(self, event: dict[str, Any]) -> None:
        self.state.epochs.append(event)
        self.plot.add(event)
        lo, hi = _STEP_SPAN["train"]
        epochs = max(1, int(event.get("epochs") or 1))
        self.progress.setValue(int((lo + (hi - lo) * min(1.0, int(event.get("epoch", 0)) / epochs)) * 1000))
        top1 = event.get("top1")
        acc = f", val. accuracy {top1:.1%}" if _finite(top1) else ""
        loss = event.get("loss")
        self.step_label.setText(
            f"Step 2 of 4: train — epoch {event.get('epoch')}/{epochs}"
            + (f", loss {loss:.3f}" if _finite(loss) else "") + acc
        )

    def _on_metrics(self, event: dict[str, Any]) -> None:
        self.state.metrics = event
        self.metrics_label.setText(format_metrics(event))

    def _on_finished(self, exit_code: int, model_dir: str) -> None:
        self.state.exit_code = exit_code
        self.start_button.setEnabled(self.available)
        self.cancel_button.setEnabled(False)
        took = time.monotonic() - self._started_at
        if exit_code == 0 and model_dir:
            self.state.model_dir = model_dir
            self.progress.setValue(1000)
            self.step_label.setText(f"Finished in {took:.0f} s. The new model is in {model_dir}")
            self.use_button.setEnabled(True)
        elif exit_code == EXIT_CANCELLED:
            self.state.error = "cancelled"
            self.step_label.setText("Cancelled. The current model is unchanged.")
            self.metrics_label.setText("Cancelled.")
        else:
            self.state.error = self.process.error or f"the trainer exited with code {exit_code}"
            self.step_label.setText(f"Training failed: {self.state.error}")
            if self.state.metrics is None:
                self.metrics_label.setText(f"Training failed: {self.state.error}")


def format_metrics(event: dict[str, Any]) -> str:
    """The final metrics as a small HTML table."""
    names = list(event.get("names") or event.get("recall", {}).keys())
    recall = event.get("recall") or {}
    precision = event.get("precision") or {}
    rows = "".join(
        f"<tr><td>{nice_name(n)}</td><td align='right'>{_pct(recall.get(n))}</td>"
        f"<td align='right'>{_pct(precision.get(n))}</td></tr>"
        for n in names
    )
    fpr = event.get("sharp_false_positive_rate")
    return (
        "<table cellspacing='0' cellpadding='3'>"
        "<tr><th align='left'>Class</th><th>Recall</th><th>Precision</th></tr>"
        f"{rows}</table>"
        f"<p><b>Sharp false-positive rate:</b> {_pct(fpr)} (sharp photos flagged as blurred)<br>"
        f"<b>Accuracy:</b> {_pct(event.get('accuracy'))} on {event.get('count', '?')} validation images</p>"
    )


def _pct(value: Any) -> str:
    if isinstance(value, dict):  # {"value": ..., ...} shapes
        value = value.get("value")
    return f"{value:.1%}" if _finite(value) else "–"


def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box
