"""BlurFlag engine: model loading, preprocessing and blur classification (no Qt, no torch)."""

from __future__ import annotations

__version__ = "0.1.0"

from engine.errors import EngineError, InvalidBlurTypeError, ModelLoadError, UnreadableImageError
from engine.model import BlurClassifier, EngineConfig, load_classifier
from engine.results import Classification, ImageResult

__all__ = [
    "BlurClassifier",
    "Classification",
    "EngineConfig",
    "EngineError",
    "ImageResult",
    "InvalidBlurTypeError",
    "ModelLoadError",
    "UnreadableImageError",
    "__version__",
    "load_classifier",
]
