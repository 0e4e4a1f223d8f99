"""Pin-sharp burned-in overlays (credit tags, banners, QR codes, logos, watermarks) for training images.

Race photo platforms burn sharp graphics into every frame. Pasting such graphics onto images of every
class, after the blur, teaches the model that a sharp overlay says nothing about the photo under it.
"""

from __future__ import annotations

import math
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["OVERLAY_STYLES", "add_overlay"]

#: The overlay styles `add_overlay` draws from.
OVERLAY_STYLES: tuple[str, ...] = ("credit_tag", "banner", "qr_panel", "logo", "watermark")

_WORDS = (
    "MARATHON",
    "HALF",
    "RUN",
    "CITY",
    "SPRING",
    "NIGHT",
    "TRAIL",
    "10K",
    "21K",
    "42K",
    "FINISH",
    "PHOTO",
    "SPORTS",
    "RACE",
    "CUP",
    "OPEN",
    "LAKE",
    "RIVER",
    "INTERNATIONAL",
    "CHALLENGE",
)
_PALETTE = (
    (220, 30, 40),
    (250, 200, 20),
    (20, 120, 220),
    (30, 170, 80),
    (240, 120, 20),
    (150, 40, 160),
    (255, 255, 255),
    (20, 20, 20),
    (0, 160, 190),
)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, int(size)))


def _name(rng: np.random.Generator) -> str:
    letters = string.ascii_letters
    n = int(rng.integers(3, 9))
    word = "".join(letters[int(i)] for i in rng.integers(0, len(letters), n))
    return word.capitalize() if rng.random() < 0.7 else word


def _title(rng: np.random.Generator, words: int) -> str:
    parts = [_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), words)]
    if rng.random() < 0.5:
        parts.append(str(int(rng.integers(2015, 2031))))
    return " ".join(parts)


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return _PALETTE[int(rng.integers(0, len(_PALETTE)))]


def _credit_tag(layer: Image.Image, rng: np.random.Generator) -> None:
    """A dark translucent tag in a top corner: icon + "by NAME" (platform photographer credit)."""
    w, h = layer.size
    size = max(8, int(min(w, h) * rng.uniform(0.022, 0.04)))
    font = _font(size)
    draw = ImageDraw.Draw(layer)
    text = f"by {_name(rng)}" if rng.random() < 0.8 else f"© {_name(rng)} {int(rng.integers(2015, 2031))}"
    tw = int(draw.textlength(text, font=font))
    box_w, box_h = tw + int(size * 2.6), int(size * 1.7)
    x = w - box_w if rng.random() < 0.7 else 0
    y = 0 if rng.random() < 0.85 else h - box_h
    shade = int(rng.integers(0, 60))
    draw.rectangle((x, y, x + box_w, y + box_h), fill=(shade, shade, shade, int(rng.integers(90, 190))))
    ix = x + size // 2
    draw.rectangle(
        (ix, y + size // 3, ix + size, y + size // 3 + size),
        outline=(255, 255, 255, 255),
        width=max(1, size // 8),
    )
    draw.text((ix + int(size * 1.5), y + size // 3 - size // 10), text, font=font, fill=(255, 255, 255, 255))


def _banner(layer: Image.Image, rng: np.random.Generator) -> None:
    """A strip along the bottom or top edge with a race title and small coloured logos."""
    w, h = layer.size
    bh = int(h * rng.uniform(0.04, 0.1))
    top = rng.random() < 0.3
    y0 = 0 if top else h - bh
    draw = ImageDraw.Draw(layer)
    style = rng.random()
    if style < 0.4:
        fill: tuple[int, int, int, int] = (255, 255, 255, int(rng.integers(120, 230)))
        ink: tuple[int, int, int, int] = (*_color(rng), 255)
        if ink[:3] == (255, 255, 255):
            ink = (20, 20, 20, 255)
    elif style < 0.7:
        fill = (*_color(rng), int(rng.integers(150, 256)))
        ink = (255, 255, 255, 255)
    else:
        fill = (0, 0, 0, int(rng.integers(60, 170)))
        ink = (255, 255, 255, 255)
    x_start = 0 if rng.random() < 0.6 else int(w * rng.uniform(0.05, 0.4))
    draw.rectangle((x_start, y0, w, y0 + bh), fill=fill)
    font = _font(int(bh * rng.uniform(0.35, 0.6)))
    x = x_start + int(bh * 0.3)
    for _ in range(int(rng.integers(1, 4))):  # logo roundels
        d = int(bh * 0.7)
        cy = y0 + (bh - d) // 2
        draw.ellipse(
            (x, cy, x + d, cy + d),
            fill=(*_color(rng), 255),
            outline=(255, 255, 255, 255),
            width=max(1, d // 12),
        )
        x += int(d * 1.2)
    text = _title(rng, int(rng.integers(2, 5)))
    draw.text(
        (x + bh // 4, y0 + bh // 2),
        text,
        font=font,
        fill=ink,
        anchor="lm",
        stroke_width=int(rng.integers(0, 2)),
        stroke_fill=ink,
    )


def _qr_modules(rng: np.random.Generator) -> np.ndarray:
    """A QR-code-like module grid: random data with the three finder patterns and timing lines."""
    n = int(rng.choice([21, 25, 29, 33]))
    grid = rng.random((n, n)) < 0.5
    finder = np.zeros((7, 7), bool)
    finder[[0, 6], :] = True
    finder[:, [0, 6]] = True
    finder[2:5, 2:5] = True
    for oy, ox in ((0, 0), (0, n - 7), (n - 7, 0)):
        grid[max(0, oy - 1) : oy + 8, max(0, ox - 1) : ox + 8] = False
        grid[oy : oy + 7, ox : ox + 7] = finder
    grid[6, 8 : n - 8] = np.arange(8, n - 8) % 2 == 0
    grid[8 : n - 8, 6] = np.arange(8, n - 8) % 2 == 0
    return grid


def _qr_panel(layer: Image.Image, rng: np.random.Generator) -> None:
    """A QR code near a corner, sometimes on a translucent panel with two lines of small text."""
    w, h = layer.size
    grid = _qr_modules(rng)
    n = grid.shape[0]
    side = int(min(w, h) * rng.uniform(0.08, 0.18))
    mod = max(1, side // (n + 2))
    side = mod * (n + 2)
    qr = np.full((n + 2, n + 2), 255, np.uint8)
    qr[1:-1, 1:-1] = np.where(grid, 0, 255)
    qr_img = Image.fromarray(np.kron(qr, np.ones((mod, mod), np.uint8)), "L").convert("RGBA")
    margin = int(min(w, h) * rng.uniform(0.01, 0.04))
    right = rng.random() < 0.7
    bottom = rng.random() < 0.75
    x = w - side - margin if right else margin
    y = h - side - margin if bottom else margin
    draw = ImageDraw.Draw(layer)
    if rng.random() < 0.6:  # panel with text to the left (or right) of the code
        font = _font(int(side * rng.uniform(0.16, 0.26)))
        lines = [_title(rng, 2), _title(rng, 2)]
        tw = max(int(draw.textlength(t, font=font)) for t in lines) + side // 3
        px0 = x - tw - side // 6 if right else x
        px1 = x + side + side // 6 if right else x + side + tw + side // 6
        draw.rectangle(
            (max(0, px0), y - side // 10, min(w, px1), y + side + side // 10),
            fill=(255, 255, 255, int(rng.integers(90, 200))),
        )
        tx = px0 + side // 8 if right else x + side + side // 6
        for i, t in enumerate(lines):
            draw.text((tx, y + side * (0.25 + 0.35 * i)), t, font=font, fill=(60, 60, 60, 255))
    layer.alpha_composite(qr_img, (x, y))


def _logo(layer: Image.Image, rng: np.random.Generator) -> None:
    """A coloured emblem with bold outlined lettering in a top corner."""
    w, h = layer.size
    size = int(min(w, h) * rng.uniform(0.06, 0.12))
    x0 = int(w * rng.uniform(0.0, 0.04))
    y0 = int(h * rng.uniform(0.0, 0.04))
    if rng.random() < 0.4:
        x0 = w - x0 - size * 3
    draw = ImageDraw.Draw(layer)
    c1, c2 = _color(rng), _color(rng)
    shape = rng.random()
    if shape < 0.4:
        draw.ellipse(
            (x0, y0, x0 + size, y0 + size), fill=(*c1, 255), outline=(*c2, 255), width=max(1, size // 10)
        )
    elif shape < 0.7:
        pts = [
            (x0 + size * (0.5 + 0.5 * math.cos(a)), y0 + size * (0.5 + 0.5 * math.sin(a)))
            for a in np.linspace(0, 2 * math.pi, int(rng.integers(3, 9)), endpoint=False)
        ]
        draw.polygon(pts, fill=(*c1, 255))
    else:  # ribbon
        draw.polygon(
            [
                (x0, y0 + size * 0.3),
                (x0 + size * 2.6, y0),
                (x0 + size * 2.4, y0 + size * 0.6),
                (x0 + size * 0.2, y0 + size * 0.9),
            ],
            fill=(*c1, 255),
        )
    font = _font(int(size * rng.uniform(0.3, 0.5)))
    text = _title(rng, 1)
    draw.text(
        (x0 + int(size * 0.3), y0 + int(size * 0.5)),
        text,
        font=font,
        fill=(*c2, 255),
        anchor="lm",
        stroke_width=max(1, size // 18),
        stroke_fill=(255, 255, 255, 255),
    )


def _watermark(layer: Image.Image, rng: np.random.Generator) -> None:
    """Large translucent lettering across the frame (platform watermark)."""
    w, h = layer.size
    font = _font(int(min(w, h) * rng.uniform(0.05, 0.1)))
    text = _title(rng, 1) if rng.random() < 0.5 else _name(rng).upper()
    x = int(w * rng.uniform(0.15, 0.6))
    y = int(h * rng.uniform(0.3, 0.75))
    alpha = int(rng.integers(70, 170))
    ImageDraw.Draw(layer).text(
        (x, y),
        text,
        font=font,
        fill=(255, 255, 255, alpha),
        anchor="mm",
        stroke_width=max(1, font.size // 25) if hasattr(font, "size") else 1,
        stroke_fill=(80, 80, 80, alpha // 2),
    )


_DRAWERS = {
    "credit_tag": _credit_tag,
    "banner": _banner,
    "qr_panel": _qr_panel,
    "logo": _logo,
    "watermark": _watermark,
}


def add_overlay(
    image: np.ndarray, rng: np.random.Generator, styles: tuple[str, ...] | None = None
) -> np.ndarray:
    """Paste one to three pin-sharp synthetic overlays near the edges of an RGB image.

    Args:
        image: HxWx3 uint8 RGB (not modified).
        rng: the random source.
        styles: the styles to draw (default: one to three drawn from `OVERLAY_STYLES`).

    Returns:
        A new HxWx3 uint8 RGB image.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
    if styles is None:
        k = int(rng.choice([1, 1, 2, 2, 3]))
        styles = tuple(str(s) for s in rng.choice(OVERLAY_STYLES, size=k, replace=False))
    unknown = [s for s in styles if s not in _DRAWERS]
    if unknown:
        raise ValueError(f"unknown overlay style(s) {unknown}; known: {', '.join(OVERLAY_STYLES)}")
    base = Image.fromarray(img, "RGB").convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    for style in styles:
        _DRAWERS[style](layer, rng)
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
