"""BlurFlag trainer: dataset preparation, blur synthesis, YOLOv8n-cls training, ONNX export and evaluation.

No Qt here. torch, ultralytics and cv2 are imported only inside the functions that need them, so
`import trainer` is cheap and works without the `train` extra.
"""

from __future__ import annotations

import importlib.util

ENABLE_HINT = "Training needs the train extra: pip install -e '.[train]' (torch, ultralytics)."


def available() -> tuple[bool, str]:
    """Whether torch and ultralytics can be imported (checked without importing them), and a message."""
    missing = [m for m in ("torch", "torchvision", "ultralytics", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"Missing {', '.join(missing)}. {ENABLE_HINT}"
    return True, "training is available"
