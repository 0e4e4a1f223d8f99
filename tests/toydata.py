"""Tiny generated labelled photos for tests: textured scenes, blurred in the four ways the classes mean."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError


def scene(seed: int, size: tuple[int, int] = (192, 128)) -> Image.Image:
    """A sharp, textured scene with a 'runner' (a tall shape) in the middle."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.line((x, y, x + int(rng.integers(-40, 40)), y + int(rng.integers(-40, 40))), fill=color, width=2)
    draw.rectangle((w // 2 - 12, h // 4, w // 2 + 12, h - 10), outline=(255, 255, 255), width=3)
    return img


def blurred(img: Image.Image, label: str) -> Image.Image:
    """The same scene with the blur a class stands for."""
    if label == "defocused_blurred":
        return img.filter(ImageFilter.GaussianBlur(3))
    if label == "motion_blurred":
        arr = np.asarray(img, dtype=np.float32)
        out = sum(np.roll(arr, k, axis=1) for k in range(-5, 6)) / 11
        return Image.fromarray(out.astype(np.uint8))
    if label == "defocused_object_portrait":
        w, h = img.size
        box = (w // 2 - 30, h // 5, w // 2 + 30, h)
        out = img.copy()
        out.paste(img.crop(box).filter(ImageFilter.GaussianBlur(3)), box[:2])
        return out
    return img


def write_class_folders(root: Path, per_class: int = 6, size: tuple[int, int] = (192, 128)) -> Path:
    """Write `root/<class>/*.jpg` for the four classes; returns root."""
    for label in ("sharp", "defocused_blurred", "motion_blurred", "defocused_object_portrait"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            blurred(scene(1000 * hash(label) % 997 + i, size), label).save(folder / f"IMG_{i * 10:04d}.jpg", quality=92)
    return root


def open_as_ultralytics_patches_it(real_open: Callable[..., Image.Image]) -> Callable[..., Image.Image]:
    """`Image.open` as importing ultralytics leaves it: a file Pillow cannot identify makes it import a HEIF plugin,
    which is not installed here (ultralytics.utils.patches.image_open)."""

    def patched(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        try:
            return real_open(fp, *args, **kwargs)
        except UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'") from None

    return patched


def texture(width: int, height: int, cell: int = 4, seed: int = 0) -> Image.Image:
    """Crisp random blocks: edges at pixel precision, like in-focus detail."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(40, 215, (height // cell + 1, width // cell + 1, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:height, :width]
    return Image.fromarray(np.ascontiguousarray(big), "RGB")


def half_soft(width: int = 1024, height: int = 683) -> Image.Image:
    """Left half crisp, right half the same texture out of focus."""
    sharp = texture(width, height)
    soft = sharp.filter(ImageFilter.GaussianBlur(4))
    out = sharp.copy()
    out.paste(soft.crop((width // 2, 0, width, height)), (width // 2, 0))
    return out
