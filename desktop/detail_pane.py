"""The detail pane: a large preview of the current image, a focus-peaking overlay, and its probabilities."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from PySide6.QtCore import QObject, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from desktop.results_view import Row, nice_name, pil_to_qimage
from desktop.threads import stop_thread
from engine.errors import UnreadableImageError
from engine.preprocess import InputSpec, open_image

PREVIEW_SIDE = 1600  # long side of the decoded preview
OVERLAY_SIDE = 1024  # long side the focus map is computed at


@dataclass(frozen=True)
class Preview:
    """A decoded preview, and its focus overlay once computed."""

    path: str
    image: QImage
    overlay: QImage | None = None
    error: str | None = None


class PreviewLoader(QObject):
    """One background thread decoding previews and focus overlays; only the latest request matters."""

    preview_ready = Signal(object)  # Preview (overlay None)
    overlay_ready = Signal(object)  # Preview (with overlay)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._wanted: tuple[str, bool] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="blurflag-preview", daemon=False)
            self._thread.start()

    def request(self, path: str, overlay: bool) -> None:
        """Load `path` (replacing any request not yet started)."""
        with self._cond:
            self._wanted = (path, overlay)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join the thread."""
        thread, self._thread = self._thread, None
        return stop_thread(self._stop, self._cond, thread, timeout)

    def _superseded(self, path: str) -> bool:
        with self._cond:
            return self._stop.is_set() or (self._wanted is not None and self._wanted[0] != path)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                assert self._wanted is not None
                path, want_overlay = self._wanted
                self._wanted = None
            try:
                pil = open_image(path, InputSpec(size=PREVIEW_SIDE // 2, draft_factor=1.0))
            except UnreadableImageError as exc:
                self.preview_ready.emit(Preview(path, QImage(), None, str(exc)))
                continue
            except Exception as exc:  # never let one file kill the loader  # noqa: BLE001
                self.preview_ready.emit(Preview(path, QImage(), None, f"{type(exc).__name__}: {exc}"))
                continue
            pil.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            preview = Preview(path, pil_to_qimage(pil))
            if self._superseded(path):
                continue
            self.preview_ready.emit(preview)
            if not want_overlay:
                continue
            try:
                from engine.focus import focus_overlay

                overlay = pil_to_qimage(focus_overlay(pil, max_side=OVERLAY_SIDE))
            except Exception as exc:  # noqa: BLE001
                self.overlay_ready.emit(Preview(path, preview.image, None, f"no focus overlay: {exc}"))
                continue
            if not self._superseded(path):
                self.overlay_ready.emit(Preview(path, preview.image, overlay))


class ImageCanvas(QWidget):
    """Paints an image scaled to fit, centred, on a dark background."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image = QImage()
        self._message = "Select a photo to preview it"
        self.setMinimumSize(200, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_image(self, image: QImage, message: str = "") -> None:
        """Show an image (or, when it is null, a message)."""
        self._image = image
        self._message = message
        self.update()

    def image(self) -> QImage:
        return self._image

    def sizeHint(self) -> QSize:
        return QSize(480, 360)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 38, 40))
        if self._image.isNull():
            painter.setPen(QColor(190, 190, 190))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._message)
            return
        size = self._image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        x = (self.width() - size.width()) / 2
        y = (self.height() - size.height()) / 2
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(QRectF(x, y, size.width(), size.height()), self._image)
        painter.end()


class ProbabilityBars(QWidget):
    """One horizontal bar per class; the chosen blur type and the user's mark are highlighted."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._probs: dict[str, float] = {}
        self._highlight: str | None = None
        self._marked: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, probs: dict[str, float], highlight: str | None, marked: str | None) -> None:
        """Show probabilities by class name."""
        self._probs, self._highlight, self._marked = dict(probs), highlight, marked
        self.setFixedHeight(max(1, len(self._probs)) * 20 + 4)
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        label_w = 150
        bar_w = max(20, self.width() - label_w - 50)
        for i, (name, p) in enumerate(self._probs.items()):
            y = 2 + i * 20
            font = painter.font()
            font.setBold(name == self._marked)
            painter.setFont(font)
            painter.setPen(self.palette().windowText().color())
            text = nice_name(name) + (" ✓" if name == self._marked else "")
            painter.drawText(QRectF(0, y, label_w - 6, 18), Qt.AlignmentFlag.AlignVCenter, text)
            painter.setPen(QPen(QColor(150, 150, 150)))
            painter.drawRect(QRectF(label_w, y + 3, bar_w, 12))
            color = QColor(205, 70, 50) if name == self._highlight else (
                QColor(60, 150, 80) if name == "sharp" else QColor(110, 130, 170))
            painter.fillRect(QRectF(label_w + 1, y + 4, max(0.0, (bar_w - 1) * p), 11), color)
            painter.setPen(self.palette().windowText().color())
            painter.drawText(QRectF(label_w + bar_w + 6, y, 44, 18), Qt.AlignmentFlag.AlignVCenter, f"{p:.0%}")
        painter.end()


class DetailPane(QWidget):
    """Large preview with a focus overlay toggle, the verdict and the override buttons of the current row."""

    override_requested = Signal(object)  # str label, or None to clear
    reject_requested = Signal()  # mark as the chosen blur type
    navigate_requested = Signal(int)  # -1 previous, +1 next
    close_preview_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loader = PreviewLoader(self)
        self._loader.preview_ready.connect(self._on_preview)
        self._loader.overlay_ready.connect(self._on_overlay)
        self._path: str | None = None
        self._preview: Preview | None = None
        self._row: Row | None = None

        self.title = QLabel("No photo selected")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.canvas = ImageCanvas()
        self.overlay_box = QCheckBox("Focus overlay (F)")
        self.overlay_box.setToolTip("Focus peaking: crisp edges are painted red, soft areas are dimmed")
        self.overlay_box.toggled.connect(self._on_overlay_toggled)
        self.legend = QLabel("")
        self.legend.setStyleSheet("color: palette(mid);")
        self.bars = ProbabilityBars()
        self.sharp_button = QPushButton("Sharp (P)")
        self.reject_button = QPushButton("Blurred (X)")
        self.clear_button = QPushButton("Unmark (U)")
        for b in (self.sharp_button, self.reject_button, self.clear_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.sharp_button.clicked.connect(lambda: self.override_requested.emit("sharp"))
        self.reject_button.clicked.connect(self.reject_requested.emit)
        self.clear_button.clicked.connect(lambda: self.override_requested.emit(None))

        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.overlay_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.sharp_button)
        buttons.addWidget(self.reject_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.legend)
        layout.addWidget(self.verdict)
        layout.addWidget(self.bars)
        layout.addLayout(buttons)
        self._set_buttons_enabled(False)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def start(self) -> None:
        """Start the preview thread."""
        self._loader.start()

    def shutdown(self) -> None:
        """Stop the preview thread."""
        self._loader.stop()

    @property
    def current_path(self) -> str | None:
        return self._path

    @property
    def preview(self) -> Preview | None:
        """The preview shown now (with its overlay once computed)."""
        return self._preview

    def set_overlay_enabled(self, on: bool) -> None:
        """Show or hide the focus overlay."""
        self.overlay_box.setChecked(on)

    def show_row(self, row: Row | None, verdict: str = "", blur_type: str | None = None) -> None:
        """Show a row (None clears the pane); the preview loads in the background."""
        self._row = row
        if row is None:
            self._path = None
            self._preview = None
            self.title.setText("No photo selected")
            self.verdict.setText("")
            self.bars.set_values({}, None, None)
            self.canvas.set_image(QImage(), "Select a photo to preview it")
            self._set_buttons_enabled(False)
            return
        self.title.setText(row.path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
        self.title.setToolTip(row.path)
        self.verdict.setText(verdict)
        self.bars.set_values(row.result.probabilities, blur_type, row.override)
        self._set_buttons_enabled(row.result.ok)
        self.reject_button.setText(f"{nice_name(blur_type)} (X)" if blur_type else "Blurred (X)")
        if row.path != self._path:
            self._path = row.path
            self._preview = None
            self.canvas.set_image(QImage(), "Loading…")
            self._loader.request(row.path, self.overlay_box.isChecked())

    def _set_buttons_enabled(self, on: bool) -> None:
        for b in (self.sharp_button, self.reject_button, self.clear_button):
            b.setEnabled(on)

    def _on_preview(self, preview: Preview) -> None:
        if preview.path != self._path:
            return
        if preview.error:
            self.canvas.set_image(QImage(), f"Cannot show this file:\n{preview.error}")
            return
        self._preview = preview
        if not self.overlay_box.isChecked():
            self.canvas.set_image(preview.image)
        elif self.canvas.image().isNull():
            self.canvas.set_image(preview.image)  # the plain preview until the overlay is ready

    def _on_overlay(self, preview: Preview) -> None:
        if preview.path != self._path:
            return
        if preview.overlay is None:
            self.legend.setText(preview.error or "")
            return
        self._preview = preview
        if self.overlay_box.isChecked():
            self.canvas.set_image(preview.overlay)

    def _on_overlay_toggled(self, on: bool) -> None:
        self.legend.setText("Focus peaking: red edges are in focus; dimmed areas are soft." if on else "")
        if on and self._preview is not None and self._preview.overlay is not None:
            self.canvas.set_image(self._preview.overlay)
        elif on and self._path:
            self._loader.request(self._path, True)  # the preview (again) and then its overlay
        elif not on and self._preview is not None:
            self.canvas.set_image(self._preview.image)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Right, Qt.Key.Key_Down):
            self.navigate_requested.emit(1)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up):
            self.navigate_requested.emit(-1)
        elif key == Qt.Key.Key_Escape:
            self.close_preview_requested.emit()
        else:
            super().keyPressEvent(event)
