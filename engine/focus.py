"""Where an image is sharp: a cheap focus map and a focus-peaking preview (numpy and PIL only).

Sharpness is measured as a ratio, so that it does not simply follow contrast or texture: the
energy of the Laplacian after a fine Gaussian (sigma 0.8 px) over its energy after a coarse one
(sigma 2 px), averaged over blocks about 1/100 of the long side. For an edge blurred by sigma s
the ratio is about (s^2 + 4) / (s^2 + 0.64): near 4-5 for a crisp edge, near 1 for a soft one,
whatever the edge's contrast. Blocks without enough fine detail to judge (sky, skin) fade out.
The scale is absolute, never stretched per image, so a blurred photo stays dark.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from engine.preprocess import _to_rgb8

#: Fine/coarse Laplacian energy ratios mapped to 0 (soft) and 1 (sharp), set by eye on real sharp,
#: defocused and motion-blurred triplets (Kwentar) and race photos.
RATIO_SOFT = 1.6
RATIO_SHARP = 3.2
#: Fine-scale energy (8-bit luma units) a block needs to count as fully textured; flatter blocks fade out.
ENERGY_FULL = 8.0
#: Edge strength below which nothing is peaked, whatever the image.
PEAK_FLOOR = 24.0
PEAK_COLOUR = (255, 40, 40)
_DIM = 0.3  # brightness kept in fully soft areas
_FINE_SIGMA = 0.8
_COARSE_SIGMA = 2.0


def _preview(image: Image.Image, max_side: int) -> Image.Image:
    """Upright 8-bit RGB copy whose long side is at most `max_side`."""
    img = ImageOps.exif_transpose(image) or image
    if img.mode not in ("RGB", "L"):
        img = _to_rgb8(img)  # 16-bit, float, CMYK, palette and alpha images, as the classifier sees them
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        factor = int(min(img.width / size[0], img.height / size[1]))
        if factor >= 2:  # integer box reduction first: fast and alias-free
            img = img.reduce(factor)
        img = img.resize(size, Image.Resampling.BILINEAR)
    return img if img.mode == "RGB" else img.convert("RGB")


def _laplacian(luma: np.ndarray) -> np.ndarray:
    """|4-neighbour Laplacian|, edges replicated."""
    p = np.pad(luma, 1, mode="edge")
    lap = 4.0 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
    return np.abs(lap, out=lap)


def _block_mean(x: np.ndarray, block: int) -> np.ndarray:
    """Mean over `block` x `block` tiles (the last partial tiles included)."""
    h, w = x.shape
    bh, bw = -(-h // block), -(-w // block)
    padded = np.pad(x, ((0, bh * block - h), (0, bw * block - w)), mode="edge")
    return padded.reshape(bh, block, bw, block).mean(axis=(1, 3), dtype=np.float32)


def _laplacians(rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """|Laplacian| of the luma after a fine and after a coarse Gaussian."""
    luma = rgb.convert("L")
    fine = _laplacian(np.asarray(luma.filter(ImageFilter.GaussianBlur(_FINE_SIGMA)), dtype=np.float32))
    coarse = _laplacian(np.asarray(luma.filter(ImageFilter.GaussianBlur(_COARSE_SIGMA)), dtype=np.float32))
    return fine, coarse


def _sharpness(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Block-wise sharpness in [0, 1], spread back smoothly to the full size."""
    h, w = fine.shape
    block = max(4, max(h, w) // 100)
    e_fine, e_coarse = _block_mean(fine, block), _block_mean(coarse, block)
    ratio = e_fine / (e_coarse + np.float32(0.5))
    score = np.clip((ratio - np.float32(RATIO_SOFT)) / np.float32(RATIO_SHARP - RATIO_SOFT), 0.0, 1.0)
    score *= np.clip(e_fine / np.float32(ENERGY_FULL), 0.0, 1.0)
    grid = Image.fromarray(_box3(score.astype(np.float32)), "F")
    out = np.asarray(grid.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean, edges replicated."""
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    total = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return np.asarray(total, dtype=np.float32) / np.float32(9.0)


def focus_map(image: Image.Image, max_side: int = 1024) -> np.ndarray:
    """Local sharpness of `image` at preview size (EXIF-upright): float32 HxW in [0, 1], 1 = crisp detail."""
    rgb = _preview(image, max(1, max_side))
    return _sharpness(*_laplacians(rgb))


def focus_overlay(image: Image.Image, max_side: int = 1024) -> Image.Image:
    """RGB preview with focus peaking: crisp edges painted red, soft areas dimmed."""
    rgb = _preview(image, max(1, max_side))
    fine, coarse = _laplacians(rgb)
    focus = _sharpness(fine, coarse)
    shade = np.float32(_DIM) + np.float32(1.0 - _DIM) * focus
    out = np.asarray(rgb, dtype=np.float32) * shade[..., None]
    threshold = max(float(np.percentile(fine[::2, ::2], 97.0)), PEAK_FLOOR)
    peaks = (fine >= threshold) & (focus >= 0.4)
    mask = Image.fromarray(peaks.astype(np.uint8) * 255, "L").filter(ImageFilter.MaxFilter(3))
    out[np.asarray(mask) > 0] = np.asarray(PEAK_COLOUR, dtype=np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
