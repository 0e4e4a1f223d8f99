"""Focus map and focus peaking: meaningful on synthetic sharp/soft halves, robust to odd inputs (their cost:
bench/focus_cost.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.focus import PEAK_COLOUR, focus_map, focus_overlay
from tests.toydata import half_soft, texture


def test_sharp_half_scores_high_and_soft_half_low() -> None:
    fmap = focus_map(half_soft())
    assert fmap.dtype == np.float32 and fmap.shape == (683, 1024)
    assert 0.0 <= float(fmap.min()) and float(fmap.max()) <= 1.0
    left, right = fmap[:, 40:460], fmap[:, 564:-40]  # away from the seam and the borders
    assert float(left.mean()) > 0.8
    assert float(right.mean()) < 0.1


def test_blurred_and_flat_images_stay_dark() -> None:
    """The scale is absolute: an image that is soft everywhere is not stretched into false sharpness."""
    blurred = texture(800, 600).filter(ImageFilter.GaussianBlur(3))
    assert float(focus_map(blurred).max()) < 0.25
    flat = Image.new("RGB", (640, 480), (120, 130, 140))
    assert float(focus_map(flat).max()) == 0.0


def test_contrast_does_not_make_soft_edges_sharp() -> None:
    low = np.asarray(texture(600, 400), dtype=np.float32)
    low_contrast_sharp = Image.fromarray((128 + (low - 128) * 0.3).astype(np.uint8), "RGB")
    high_contrast_soft = Image.fromarray(
        np.clip(128 + (low - 128) * 1.6, 0, 255).astype(np.uint8), "RGB"
    ).filter(ImageFilter.GaussianBlur(3))
    assert float(focus_map(low_contrast_sharp).mean()) > 3 * float(focus_map(high_contrast_soft).mean())


def test_preview_size_orientation_and_modes() -> None:
    big = texture(3000, 2000)
    assert focus_map(big).shape == (683, 1024)
    assert focus_map(big, max_side=300).shape == (200, 300)
    small = texture(200, 100)
    assert focus_map(small).shape == (100, 200), "never upscaled"
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    texture(300, 200).save(buf, "JPEG", exif=exif)
    rotated = Image.open(io.BytesIO(buf.getvalue()))
    assert focus_map(rotated).shape == (300, 200)
    assert focus_overlay(rotated).size == (200, 300)
    for mode in ("L", "RGBA", "I;16", "P", "CMYK", "F"):
        img = texture(120, 90).convert(mode) if mode != "I;16" else Image.new("I;16", (120, 90), 30000)
        assert focus_map(img).shape == (90, 120)
        assert focus_overlay(img).mode == "RGB"
    for size in ((1, 1), (3, 2), (2, 700)):
        assert focus_map(Image.new("RGB", size)).shape == (size[1], size[0])
        assert focus_overlay(Image.new("RGB", size)).size == size


def test_overlay_peaks_the_sharp_half_and_dims_the_soft_half() -> None:
    image = half_soft()
    overlay = focus_overlay(image)
    assert overlay.mode == "RGB" and overlay.size == image.size
    out = np.asarray(overlay).astype(np.int32)
    src = np.asarray(image).astype(np.int32)
    peaked = np.all(out == np.asarray(PEAK_COLOUR), axis=2)
    assert peaked[:, 40:460].mean() > 0.02
    assert peaked[:, 564:-40].mean() == 0.0
    soft_out, soft_src = out[:, 564:-40], src[:, 564:-40]
    assert soft_out.mean() < 0.5 * soft_src.mean(), "soft areas are dimmed"
    keep = ~peaked[:, 40:460]
    assert out[:, 40:460][keep].mean() > 0.85 * src[:, 40:460][keep].mean(), (
        "sharp areas keep their brightness"
    )


@pytest.mark.parametrize("max_side", [0, -5])
def test_degenerate_max_side_is_clamped(max_side: int) -> None:
    assert focus_map(texture(50, 40), max_side=max_side).shape == (1, 1)
