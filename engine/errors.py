"""The engine's error family."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelLoadError(EngineError):
    """The model folder is missing, unreadable or inconsistent."""


class UnreadableImageError(EngineError):
    """One image could not be read or decoded; the message says why in words for the user."""


class InvalidBlurTypeError(EngineError, ValueError):
    """A blur type was asked for that the model cannot detect."""
