"""Keep ultralytics offline: no network probes, no pip auto-installs, a private settings folder."""

from __future__ import annotations

import os
from pathlib import Path


def configure_offline(work_dir: Path) -> None:
    """Set the environment ultralytics reads at import time; call before importing ultralytics."""
    config_dir = Path(work_dir) / ".ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"  # is_online() answers False without a DNS probe
    os.environ["YOLO_AUTOINSTALL"] = "0"  # never pip-install a missing requirement at run time
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)  # never write into the user's ~/.config
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("MPLBACKEND", "Agg")


def disable_sync() -> None:
    """Turn ultralytics' analytics/sync off in its (private) settings file."""
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False, "hub": False} if "hub" in SETTINGS else {"sync": False})
