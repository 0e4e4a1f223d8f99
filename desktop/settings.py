"""The one module that owns QSettings: every key is declared here once, with its type and default.

Preferences and window state live in one INI file. Its path is explicit (tests and portable builds pass
one); by default it is the platform's per-user config location. The app data folder (result database,
user-trained models, trainer runs) defaults to the platform's AppDataLocation and can be overridden by
a constructor argument or by the `paths/data_dir` key of the INI, so a portable build keeps everything
beside it and tests never touch the real home folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

ORGANIZATION = "BlurFlag"
APPLICATION = "BlurFlag"
#: Bumped when a key changes meaning; `Settings` migrates older files on open.
SCHEMA_VERSION = 1
_SCHEMA_KEY = "meta/schema_version"

T = TypeVar("T")


@dataclass(frozen=True)
class Option(Generic[T]):
    """One settings key with its default; the default's type is the value's type."""

    key: str
    default: T
    doc: str = ""


_REGISTRY: dict[str, Option[Any]] = {}


def _declare(key: str, default: T, doc: str = "") -> Option[T]:
    if key in _REGISTRY:
        raise ValueError(f"settings key declared twice: {key}")
    option = Option(key, default, doc)
    _REGISTRY[key] = option
    return option


# Preferences.
FOLDERS: Option[list[str]] = _declare("watch/folders", [], "folders to watch")
RECURSIVE: Option[bool] = _declare("watch/recursive", False, "include subfolders")
USE_POLLING: Option[bool] = _declare("watch/use_polling", False, "poll instead of native events (network drives)")
POLL_INTERVAL: Option[float] = _declare("watch/poll_interval", 2.0, "seconds between rescans")
SETTLE_SECONDS: Option[float] = _declare("watch/settle_seconds", 1.0, "a file must be unchanged this long")
WATCHING: Option[bool] = _declare("watch/active", False, "watching was on when the app closed")
BLUR_TYPE: Option[str] = _declare("flag/blur_type", "motion_blurred", "chosen blur type; '' shows all classes")
FLAGGED_ONLY: Option[bool] = _declare("flag/flagged_only", False, "show flagged rows only")
AUTO_ADVANCE: Option[bool] = _declare("flag/auto_advance", True, "select the next row after marking one")
EMBED_XMP: Option[bool] = _declare("actions/embed_xmp", False, "also embed XMP into JPEGs (explicit opt-in)")
FLAGGED_RATING: Option[int] = _declare("actions/flagged_rating", 1, "xmp:Rating written for flagged images")
ACTION_SUBFOLDER: Option[str] = _declare("actions/subfolder", "_blurflag", "where flagged files are moved")
LAST_DIR: Option[str] = _declare("actions/last_dir", "", "last folder used in a file dialog")
MODEL_DIR: Option[str] = _declare("model/dir", "", "user model folder; '' is the bundled model")
DATA_DIR: Option[str] = _declare("paths/data_dir", "", "app data folder; '' is the platform default")
TRAIN_SOURCE: Option[str] = _declare("trainer/source", "", "training data folder")
TRAIN_EPOCHS: Option[int] = _declare("trainer/epochs", 20)
TRAIN_IMGSZ: Option[int] = _declare("trainer/imgsz", 224)
TRAIN_BATCH: Option[int] = _declare("trainer/batch", 32)
TRAIN_SYNTH: Option[int] = _declare("trainer/synth_per_class", 0, "synthesised examples per class (0: none)")
TRAIN_OVERRIDES: Option[bool] = _declare("trainer/include_overrides", True, "add my overrides as examples")
TRAIN_NETWORK: Option[str] = _declare("trainer/network", "yolov8n-cls", "network to train (yolov8n-cls or mobilenetv2)")
TRAIN_WEIGHTS: Option[str] = _declare("trainer/weights", "", "starting weights (.pt or .onnx); '' lets the trainer choose")
# Window state (kept apart from preferences).
GEOMETRY: Option[bytes] = _declare("window/geometry", b"")
WINDOW_STATE: Option[bytes] = _declare("window/state", b"")
SPLITTER: Option[bytes] = _declare("window/splitter", b"")
HEADER: Option[bytes] = _declare("window/header", b"")
TAB: Option[int] = _declare("window/tab", 0)


def options() -> tuple[Option[Any], ...]:
    """Every declared option."""
    return tuple(_REGISTRY.values())


def default_ini_path() -> Path:
    """The per-user INI file."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(base) / ORGANIZATION / "blurflag.ini"


def default_data_dir() -> Path:
    """The platform's app data folder for BlurFlag."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    return Path(base) / ORGANIZATION


class Settings:
    """Typed access to the INI file; values of the wrong type fall back to the option's default."""

    def __init__(self, ini_path: str | Path | None = None, data_dir: str | Path | None = None) -> None:
        self.ini_path = Path(ini_path) if ini_path else default_ini_path()
        self.ini_path.parent.mkdir(parents=True, exist_ok=True)
        self._qs = QSettings(str(self.ini_path), QSettings.Format.IniFormat)
        self._explicit_data_dir = Path(data_dir) if data_dir else None
        self._migrate()

    def _migrate(self) -> None:
        raw = self._qs.value(_SCHEMA_KEY)
        try:
            version = int(raw) if raw is not None else 0
        except (TypeError, ValueError):
            version = 0
        # Schema 0 (no version key) and 1 share their keys; later migrations go here, oldest first.
        if version < SCHEMA_VERSION:
            self._qs.setValue(_SCHEMA_KEY, SCHEMA_VERSION)
            self._qs.sync()

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        return int(str(self._qs.value(_SCHEMA_KEY, SCHEMA_VERSION)))

    @property
    def data_dir(self) -> Path:
        """App data folder (created): explicit argument, else the INI's `paths/data_dir`, else the default."""
        configured = self.get(DATA_DIR)
        path = self._explicit_data_dir or (Path(configured) if configured else default_data_dir())
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def user_models_dir(self) -> Path:
        """Folder of models trained by the user."""
        return self.data_dir / "models"

    @property
    def trainer_runs_dir(self) -> Path:
        """Folder of trainer work folders."""
        return self.data_dir / "trainer-runs"

    def get(self, option: Option[T]) -> T:
        """The stored value, converted to the option's type, or the default."""
        raw = self._qs.value(option.key)
        if raw is None:
            return _copy(option.default)
        try:
            return _convert(raw, option.default)
        except (TypeError, ValueError):
            return _copy(option.default)

    def set(self, option: Option[T], value: T) -> None:
        """Store a value (checked against the option's type)."""
        self._qs.setValue(option.key, _encode(value, option.default))

    def reset(self, option: Option[Any]) -> None:
        """Forget a stored value; `get` answers the default again."""
        self._qs.remove(option.key)

    def sync(self) -> None:
        """Write pending changes to disk."""
        self._qs.sync()


def _copy(value: T) -> T:
    return list(value) if isinstance(value, list) else value  # type: ignore[return-value]


def _encode(value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"expected bool, got {value!r}")
        return "true" if value else "false"
    if isinstance(default, list):
        return json.dumps([str(v) for v in value])
    if isinstance(default, bytes):
        return QByteArray(bytes(value))
    if isinstance(default, (int, float, str)):
        return type(default)(value)
    raise TypeError(f"unsupported settings type {type(default).__name__}")


def _convert(raw: Any, default: T) -> T:
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw  # type: ignore[return-value]
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes"):
            return True  # type: ignore[return-value]
        if text in ("false", "0", "no"):
            return False  # type: ignore[return-value]
        raise ValueError(text)
    if isinstance(default, list):
        parsed = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(parsed, list):
            raise ValueError("not a list")  # noqa: TRY004 - a bad stored value, which `get` handles
        return [str(v) for v in parsed]  # type: ignore[return-value]
    if isinstance(default, bytes):
        return bytes(raw.data() if isinstance(raw, QByteArray) else raw)  # type: ignore[return-value]
    return type(default)(raw)  # type: ignore[call-arg, return-value]
