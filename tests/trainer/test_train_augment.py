"""What the training-time crop does to the pixels the model reads blur from (MODEL_CARD.md, Training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HAS_TRAIN = all(importlib.util.find_spec(m) for m in ("torch", "ultralytics"))
needs_train = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")


def _max_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crop_scale: float | None) -> float:
    """Largest pixel change (flip allowed) that ultralytics' training transform makes, with our settings, to a
    model-size image of pure fine detail, over 20 draws. Colour jitter is off: it changes values, not sharpness."""
    from trainer.env import configure_offline

    for var in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "YOLO_VERBOSE", "MPLBACKEND"):
        monkeypatch.delenv(var, raising=False)  # restored after the test; configure_offline sets them
    configure_offline(tmp_path / "work")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import ClassificationDataset

    from trainer.train import TrainConfig, _train_args

    size = 224
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    (tmp_path / "data" / "sharp").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "data" / "sharp" / "a.png")
    cfg = TrainConfig() if crop_scale is None else TrainConfig(scale=crop_scale)
    overrides = _train_args(cfg, tmp_path / "data", size, tmp_path / "runs", "t")
    overrides.update(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    ds = ClassificationDataset(str(tmp_path / "data"), get_cfg(overrides=overrides), augment=True, prefix="train")
    want = pixels.astype(np.float32) / 255.0
    worst = 0.0
    for _ in range(20):
        got = ds[0]["img"].numpy().transpose(1, 2, 0)
        assert got.shape == want.shape
        worst = max(worst, float(min(np.abs(got - want).max(), np.abs(got - want[:, ::-1]).max())))
    return worst


@needs_train
def test_crop_scale_zero_keeps_every_pixel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--crop-scale 0` means what its help says: the image reaches training as the engine's resize made it."""
    assert _max_change(tmp_path, monkeypatch, 0.0) < 1e-6


@needs_train
def test_default_crop_resamples_training_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped recipe's 10% crop re-samples (softens) training images; the card and TrainConfig say so and
    explain why it stays. If ultralytics stops re-sampling, that reasoning no longer holds."""
    assert _max_change(tmp_path, monkeypatch, None) > 0.1
