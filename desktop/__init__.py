"""BlurFlag's PySide6 desktop app: watch export folders, flag blur, act on results, retrain."""

from __future__ import annotations
