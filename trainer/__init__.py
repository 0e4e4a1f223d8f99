"""BlurFlag trainer: dataset preparation, blur synthesis, YOLOv8n-cls training, ONNX export and evaluation.

No Qt here. torch, ultralytics and cv2 are imported only inside the functions that need them, so
`import trainer` is cheap and works without the `train` extra.
"""

from __future__ import annotations

import importlib.util

#: The networks `blurflag-train run --network` trains: YOLOv8n-cls through ultralytics, or the ImageNet-pretrained
#: MobileNetV2 of trainer/imagenet.py (the bundled model's two MobileNetV2 networks were trained that way).
NETWORKS: tuple[str, ...] = ("yolov8n-cls", "mobilenetv2")

ENABLE_HINT = "Training needs the train extra: pip install -e '.[train]' (torch, ultralytics)."


def available() -> tuple[bool, str]:
    """Whether torch and ultralytics can be imported (checked without importing them), and a message."""
    missing = [m for m in ("torch", "torchvision", "ultralytics", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"Missing {', '.join(missing)}. {ENABLE_HINT}"
    return True, "training is available"
