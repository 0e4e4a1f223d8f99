"""Draw BlurFlag's icon (resources/icon.png, 256 px, and resources/icon.ico) with Pillow alone.

A lens whose left half is sharp and right half blurred, and a red flag: "this one is blurred".
Run: `.venv/bin/python scripts/make_icon.py`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = 1024  # drawn large, then downsampled: smooth edges without an anti-aliasing library
ICO_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)]


def draw_icon(size: int = 256) -> Image.Image:
    """The icon as an RGBA image of `size` pixels."""
    s = SIZE
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((32, 32, s - 32, s - 32), radius=200, fill=(24, 46, 84, 255))

    lens = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    ld = ImageDraw.Draw(lens)
    cx, cy = s // 2 - 40, s // 2 + 40
    rings = [(330, (232, 238, 245)), (270, (40, 60, 96)), (215, (120, 170, 230)), (150, (20, 32, 56)),
             (80, (235, 245, 255))]
    for r, colour in rings:
        ld.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour + (255,))
    blurred = lens.filter(ImageFilter.GaussianBlur(26))
    left = Image.new("L", (s, s), 0)
    ImageDraw.Draw(left).rectangle((0, 0, cx, s), fill=255)
    lens_mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(lens_mask).ellipse((cx - 345, cy - 345, cx + 345, cy + 345), fill=255)
    half = Image.composite(lens, blurred, left)
    half.putalpha(ImageChops.multiply(half.getchannel("A"), lens_mask))
    img.alpha_composite(half)
    d = ImageDraw.Draw(img)
    d.line((cx, cy - 350, cx, cy + 350), fill=(255, 255, 255, 200), width=10)

    # The flag: a pole and a red pennant, top right.
    px, py = s - 250, 120
    d.rounded_rectangle((px, py, px + 28, py + 420), radius=12, fill=(245, 245, 245, 255))
    d.polygon([(px + 28, py + 10), (px + 200, py + 85), (px + 28, py + 170)], fill=(230, 57, 70, 255))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def main() -> int:
    """Write resources/icon.png and resources/icon.ico."""
    out = Path(__file__).resolve().parent.parent / "resources"
    out.mkdir(exist_ok=True)
    icon = draw_icon(256)
    icon.save(out / "icon.png", optimize=True)
    icon.save(out / "icon.ico", sizes=ICO_SIZES)
    print(f"wrote {out / 'icon.png'} and {out / 'icon.ico'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
