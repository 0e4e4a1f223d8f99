"""Image decoding and the one preprocessing function shared by inference, dataset preparation and evaluation.

The model sees an `InputSpec.size` square. Two geometric modes exist:

* ``stretch`` (BlurFlag's own models): the whole frame is resized to the square, so runners at the
  edges of a 3:2 frame are kept and no pixels are spent on padding.
* ``center_crop`` (a plain ultralytics export): shortest side to the size, then a centre crop, which is
  what ultralytics does at predict time.

JPEGs are decoded at a reduced DCT scale (libjpeg "draft" mode) when the decoded short side still
covers ``draft_factor`` times the input size (``original_draft_factor`` for camera originals larger than
``original_side``); bench/README.md reports the measured effect.

At inference, a view whose darkest pixels are far from black (a bright veil of haze, mist, fog or backlit glare
over the scene) has that veil lifted before the network sees it (`lift_veil`, `InputSpec.veil_gate`), and an
underexposed frame, whose brightest pixels are far from white, is brought up to a normal exposure
(`lift_dark`, `InputSpec.dark_gate`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UnreadableImageError

ResizeMode = Literal["stretch", "center_crop"]

#: Formats BlurFlag reads, as PIL names them (MPO is the multi-picture JPEG some cameras write).
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "TIFF", "WEBP", "BMP"})
#: File suffixes treated as images when a folder is expanded.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp"})
#: Default decompression-bomb limit: 250 megapixels covers 100 MP medium-format files with room to spare.
DEFAULT_MAX_PIXELS = 250_000_000
_BACKGROUND = (128, 128, 128)  # transparent pixels become neutral grey: no fake edges, no fake softness

# PIL's own bomb check must not fire before ours with a less helpful message.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, DEFAULT_MAX_PIXELS)


#: Veil lift (engine default, `InputSpec.veil_gate`): a view whose 0.5th percentile, in every channel, is at least
#: this 8-bit sRGB value (linear 0.06) is seen through a veil. MODEL_CARD.md ("Haze and fog") measures it: 3 of the 798
#: shared photos and 5 of 119 real photos from outside them are that bright at their darkest.
VEIL_GATE = 69
#: Share of a view's pixels allowed below its black point.
_VEIL_PERCENTILE = 0.005

#: Dark lift (engine default, `InputSpec.dark_gate`): a frame whose white point (dark_white_point: the brightest of
#: its channels' 99.5th percentiles, on the model-sized view) is below this 8-bit sRGB value (linear 0.26: about 2
#: stops under a white at 255) is underexposed and gets a gain in linear light (lift_dark). MODEL_CARD.md ("Dark
#: frames") measures it: 3 of the 917 real photos of ../shared and from outside it are that dark, and 12 of 2,452
#: held-out synthetic images; it undoes most of what 2.7 stops of underexposure cost.
DARK_GATE = 140
#: The 8-bit value a lifted frame's white point is brought to, and the largest gain (3 stops) a frame gets.
DARK_TARGET = 235
DARK_MAX_GAIN = 8.0
#: Share of a view's pixels allowed above its white point.
_DARK_PERCENTILE = 0.005

#: The reducing gap BlurFlag trains new models with. Measured (bench/throughput.py --draft-check): it moved a model
#: trained without it by at most 0.024 on the shared race photos, and it cuts the 2048-px resize from 19 to 6 ms.
TRAIN_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes a model input."""

    size: int = 224
    resize: ResizeMode = "center_crop"
    # Decoded short side >= draft_factor * size, or no draft (0 disables all reduced decoding). 4.0: exports up to
    # 2048 px decode in full, as the training data did (at 1/2 scale they moved probabilities by up to 0.065).
    draft_factor: float = 4.0
    # Camera originals (long side > original_side) decode further down, to a short side >= original_draft_factor *
    # size: 24 MP files at 1/8. Against a full decode, 1/8 and 1/4 moved the shipped model's probabilities alike (max
    # 0.037 / 0.036, p99 0.021 / 0.016 on 200 24 MP JPEGs), and 1/8 saves ~10 ms per image. Never above draft_factor.
    original_side: int = 3000
    original_draft_factor: float = 2.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    # PIL's resize(reducing_gap=...): an integer box reduction first, then the filter over at least this many
    # times the target size. None: the filter over the whole decoded image (slower; what older models saw).
    # Models record the value they were trained with (ONNX metadata "blurflag_reducing_gap").
    reducing_gap: float | None = None
    # At inference (preprocess), lift a veil from views whose darkest pixels reach this sRGB value (lift_veil);
    # None: never (what dataset preparation writes, and the network alone).
    veil_gate: int | None = None
    # At inference (preprocess), brighten frames whose white point is below this sRGB value (lift_dark); None: never.
    dark_gate: int | None = None

    @property
    def filter(self) -> Image.Resampling:
        # Lanczos keeps the frequencies near Nyquist that carry blur evidence; center_crop copies
        # ultralytics' bilinear so plain exports see what they were trained on.
        return Image.Resampling.LANCZOS if self.resize == "stretch" else Image.Resampling.BILINEAR


def parse_reducing_gap(text: str | None) -> float | None:
    """A reducing gap as written in metadata or on a command line: a number >= 1, or none ("", "none", None).

    Raises:
        ValueError: for anything else.
    """
    if text is None or text.strip().lower() in ("", "none"):
        return None
    try:
        gap = float(text)
    except ValueError:
        raise ValueError(f"a reducing gap is a number >= 1 or 'none', got {text!r}") from None
    if not gap >= 1.0:
        raise ValueError(f"a reducing gap is a number >= 1 or 'none', got {text!r}")
    return gap


def draft_side(spec: InputSpec, image_size: tuple[int, int]) -> int:
    """The box libjpeg's draft mode is asked to cover for an image of `image_size` (0: decode in full)."""
    if spec.draft_factor <= 0:
        return 0
    factor = spec.draft_factor
    if max(image_size) > spec.original_side:
        factor = min(factor, spec.original_draft_factor)
    return round(spec.size * factor) if factor > 0 else 0


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether a file name looks like an image BlurFlag reads."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def open_image(path: str | os.PathLike[str], spec: InputSpec | None = None) -> Image.Image:
    """Decode an image file to an upright 8-bit RGB image, at reduced JPEG scale when `spec` allows.

    Raises:
        UnreadableImageError: with a message fit for the user, for any file that cannot be used.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise UnreadableImageError("file not found") from None
    except OSError as exc:
        raise UnreadableImageError(f"cannot access file: {exc.strerror or exc}") from None
    if p.is_dir():
        raise UnreadableImageError("is a folder, not an image")
    if size == 0:
        raise UnreadableImageError("empty file (0 bytes)")
    try:
        with Image.open(p) as img:
            return _decode(img, spec)
    except UnreadableImageError:
        raise
    except (UnidentifiedImageError, ImportError):
        # ImportError: in a process that has imported ultralytics (the trainer), `Image.open` is patched to import a
        # HEIF plugin for files Pillow cannot identify, and that plugin is not installed: the same verdict.
        raise UnreadableImageError("not an image, or an unsupported format") from None
    except Image.DecompressionBombError:
        raise UnreadableImageError("image too large (decompression-bomb limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise UnreadableImageError(f"truncated or incomplete file ({msg})") from None
        raise UnreadableImageError(f"corrupt or unsupported image ({msg})") from None
    except MemoryError:
        raise UnreadableImageError("not enough memory to decode this image") from None


def _decode(img: Image.Image, spec: InputSpec | None) -> Image.Image:
    fmt = img.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise UnreadableImageError(
            f"unsupported format {fmt}; BlurFlag reads JPEG, PNG, TIFF, WebP and BMP"
        )
    limit = spec.max_pixels if spec else DEFAULT_MAX_PIXELS
    w, h = img.size
    if w * h > limit:
        raise UnreadableImageError(
            f"image too large: {w}x{h} is {w * h / 1e6:.0f} MP, the limit is {limit / 1e6:.0f} MP"
        )
    side = draft_side(spec, (w, h)) if spec is not None and fmt in ("JPEG", "MPO") else 0
    if side:
        img.draft("RGB", (side, side))
    img.load()
    # In place: without it Pillow returns a full copy even when nothing needs turning (~1 ms per 24 MP image).
    ImageOps.exif_transpose(img, in_place=True)
    return _to_rgb8(img)


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: greyscale, CMYK, 16-bit, float, palette and alpha images included."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_model_image(img: Image.Image, spec: InputSpec) -> Image.Image:
    """The geometric step: an RGB image to the model's square input, per `spec.resize`."""
    s = spec.size
    if spec.resize == "stretch":
        return img.resize((s, s), spec.filter, reducing_gap=spec.reducing_gap) if img.size != (s, s) else img
    w, h = img.size
    scale = s / min(w, h)
    nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), spec.filter, reducing_gap=spec.reducing_gap)
    left, top = (nw - s) // 2, (nh - s) // 2
    return img.crop((left, top, left + s, top + s))


def to_tensor(img: Image.Image) -> np.ndarray:
    """RGB uint8 HxWx3 to float32 3xHxW in [0, 1] (no mean/std, as ultralytics trains)."""
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """8-bit sRGB values (0-255, any numeric array) to linear light in [0, 1] (the sRGB transfer function)."""
    v = v / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb8(x: np.ndarray) -> np.ndarray:
    """Linear light (clipped to [0, 1]) to 8-bit sRGB, rounded: the inverse of `srgb_to_linear`."""
    x = np.clip(x, 0.0, 1.0)
    v = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.round(v * 255.0), 0, 255).astype(np.uint8)


#: Linear light of each 8-bit sRGB value.
SRGB8_TO_LINEAR = srgb_to_linear(np.arange(256, dtype=np.float64))


def veil_black_point(img: Image.Image) -> np.ndarray:
    """Per channel, the 8-bit value below which 0.5% of the image's pixels lie."""
    arr = np.asarray(img, dtype=np.uint8).reshape(-1, 3)
    limit = _VEIL_PERCENTILE * arr.shape[0]
    out = np.empty(3, dtype=np.int64)
    for c in range(3):
        cum = np.cumsum(np.bincount(arr[:, c], minlength=256))
        out[c] = int(np.searchsorted(cum, limit, side="right"))
    return out


def lift_veil(img: Image.Image, black: np.ndarray) -> Image.Image:
    """`img` with a bright veil lifted: each channel's `black` point (veil_black_point) taken back to black.

    A veil adds light to the whole scene, x -> t * x + A * (1 - t) in linear light: contrast falls, every edge stays.
    The network, trained on clear air, reads such a frame as motion-blurred (MODEL_CARD.md, "Haze and fog"), so
    each channel is mapped (x - b) / (1 - b) in linear light: the exact inverse of a uniform veil up to its
    transmission t, which only darkens. Blur is kept as it is.
    """
    lut: list[int] = []
    for b in black:  # one 256-entry table per channel, as Image.point takes them
        lo = SRGB8_TO_LINEAR[min(int(b), 254)]
        lut.extend(linear_to_srgb8((SRGB8_TO_LINEAR - lo) / (1.0 - lo)).tolist())
    return img.point(lut)


def dark_white_point(*images: Image.Image) -> int:
    """The brightest of the channels' white points: the 8-bit value that 99.5% of the pixels stay at or below (of all
    `images` together: the quadrant check's views are one frame)."""
    # one row per channel (Pillow's C histogram), summed over the images
    hist = sum(np.asarray(img.histogram(), dtype=np.int64) for img in images).reshape(-1, 256)
    cum = np.cumsum(hist, axis=1)
    limit = (1.0 - _DARK_PERCENTILE) * cum[0, -1]
    return max(int(np.searchsorted(row, limit, side="left")) for row in cum)


def lift_dark(img: Image.Image, white: int) -> Image.Image:
    """`img` brought up from underexposure: a gain in linear light that takes its `white` point to DARK_TARGET.

    Exposure scales the light of the whole scene, x -> k * x in linear light, so a gain is its inverse (up to the
    highlights the camera clipped and the noise it added); at most DARK_MAX_GAIN. The network, trained on photos
    exposed for the runner, finds less blur in a frame 2.7 stops too dark and calls more sharp frames blurred
    (MODEL_CARD.md, "Dark frames"). Blur is kept as it is.
    """
    lo = SRGB8_TO_LINEAR[max(int(white), 1)]
    gain = min(DARK_MAX_GAIN, SRGB8_TO_LINEAR[DARK_TARGET] / lo)
    return img.point(linear_to_srgb8(np.minimum(SRGB8_TO_LINEAR * gain, 1.0)).tolist() * 3)


def exposed(
    images: list[Image.Image], spec: InputSpec, judged: int | None = None
) -> tuple[list[Image.Image], list[Image.Image]]:
    """`images` (a decoded frame, or crops of one frame) and their model-sized views, all brought up from
    underexposure where `spec.dark_gate` calls for it.

    The gate looks at the model-sized views (cheap) of the first `judged` images together (default: all): one frame,
    one exposure, so the quadrant check (engine.tiles) judges its quadrant views and lifts every crop alike. The gain
    goes on the decoded images, before the resize, so that each view is made from all its levels (as lift_veil).
    """
    views = [to_model_image(img, spec) for img in images]
    if spec.dark_gate is not None:
        white = dark_white_point(*views[:judged])
        if white < spec.dark_gate:
            images = [lift_dark(img, white) for img in images]  # a gain per pixel: as the frame lifted, then cut
            views = [to_model_image(img, spec) for img in images]
    return list(images), views


def preprocess(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """An already decoded RGB image to one model input (3xSxS float32).

    With `spec.dark_gate`, an underexposed frame is brought up first (exposed). With `spec.veil_gate`, a view whose
    black point (veil_black_point of the model-sized view) reaches the gate in every channel is made again from the
    decoded image with its veil lifted (lift_veil): lifting the 8-bit model-sized view instead would stretch its few
    remaining levels into steps, which cost a third of the defocus found under thick veils (MODEL_CARD.md, "Haze and
    fog").
    """
    (img,), (model_image,) = exposed([img], spec)
    return finish_view(img, model_image, spec)


def finish_view(img: Image.Image, model_image: Image.Image, spec: InputSpec) -> np.ndarray:
    """`model_image` (the model-sized view of the decoded `img`) as a model input, its veil lifted where
    `spec.veil_gate` calls for it (preprocess)."""
    if spec.veil_gate is not None:
        black = veil_black_point(model_image)
        if int(black.min()) >= spec.veil_gate:
            model_image = to_model_image(lift_veil(img, black), spec)
    return to_tensor(model_image)


def load_model_input(path: str | os.PathLike[str], spec: InputSpec) -> np.ndarray:
    """The shared preprocessing: file to model input, exactly as the model was trained."""
    return preprocess(open_image(path, spec), spec)
