"""The one place that knows where bundled files live, frozen (PyInstaller) or from a checkout."""

from __future__ import annotations

import sys
from pathlib import Path

IS_FROZEN: bool = bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def bundle_root() -> Path:
    """Folder holding `models/` and `resources/`: the PyInstaller bundle or the repository root."""
    if IS_FROZEN:
        return Path(getattr(sys, "_MEIPASS"))
    return Path(__file__).resolve().parent.parent


def default_model_dir() -> Path:
    """The bundled model folder."""
    return bundle_root() / "models"


def resource_path(name: str) -> Path:
    """A file under `resources/`."""
    return bundle_root() / "resources" / name
