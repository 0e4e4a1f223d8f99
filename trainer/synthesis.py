"""Blur synthesis: turn sharp photos into physically plausible blurred training and evaluation images.

Every blur is applied in linear light (sRGB -> linear -> blur -> sRGB), because a lens or a moving
sensor integrates light, not gamma-encoded values: that is what makes highlights bloom into discs and
streaks the way they do in real photos. Clipped highlights are optionally expanded before blurring,
since a value of 255 in the source usually stands for something brighter.

Strengths are expressed in pixels at a 2048-px long side (the size of the shared race photos) and
scaled to the image actually given, so the same record means the same visible blur at any working size.

Subject/background kinds composite two layers through a person mask:

* blurred subject on a sharp background (``subject_motion``, ``subject_defocus``): the subject layer is
  blurred with premultiplied alpha from a dilated, feathered mask (so the blur spreads over the
  background as a moving or defocused foreground really does, and mask misses at hair or limb edges
  are blurred too), over a background plate whose hidden part is filled from its surroundings;
* sharp subject on a blurred background (``bokeh``, ``panning``): the background plate is blurred with
  the subject region filled from the surroundings first, so the person's colours never leak into the
  background as a halo.

`finish` then applies one noise + JPEG pipeline whose parameters are drawn independently of the kind.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from engine.preprocess import SRGB8_TO_LINEAR, linear_to_srgb8
from trainer.overlays import add_overlay

__all__ = [
    "KIND_LABELS",
    "LABELS",
    "MASK_KINDS",
    "REFERENCE_LONG_SIDE",
    "SynthRecord",
    "add_overlay",
    "contact_sheet",
    "defocus_kernel",
    "finish",
    "motion_kernel",
    "shake_path",
    "strength_range",
    "synthesize",
    "veil",
]

#: The synthetic kinds and the class each one is labelled as.
KIND_LABELS: dict[str, str] = {
    "defocus": "defocused_blurred",
    "shake": "motion_blurred",
    "linear_motion": "motion_blurred",
    "subject_motion": "motion_blurred",
    "subject_defocus": "defocused_object_portrait",
    "bokeh": "sharp",
    "panning": "sharp",
    "high_iso": "sharp",
    "clean": "sharp",
}
#: Kinds that composite through a person mask (a mask is required for them).
MASK_KINDS: frozenset[str] = frozenset({"subject_motion", "subject_defocus", "bokeh", "panning"})
#: The four classes a synthetic label can be (as a set: the model files own the order).
LABELS: frozenset[str] = frozenset(
    {"sharp", "defocused_object_portrait", "defocused_blurred", "motion_blurred"}
)
#: Strengths are pixels at this long side.
REFERENCE_LONG_SIDE = 2048

# Default sampling ranges, px at a 2048-px long side: disk radius for defocus kinds, path length for
# motion kinds. The lower ends are blur that is still plainly visible after the model's downscale
# (real defocus in the Kwentar triplets is a disc of radius ~10-25 px at 2048, real shake 50-100 px).
_STRENGTH_RANGES: dict[str, tuple[float, float]] = {
    "defocus": (5.0, 28.0),
    "shake": (14.0, 90.0),
    "linear_motion": (14.0, 90.0),
    "subject_motion": (16.0, 90.0),
    "subject_defocus": (6.0, 28.0),
    "bokeh": (8.0, 48.0),
    "panning": (30.0, 160.0),
    "high_iso": (0.0, 0.0),
    "clean": (0.0, 0.0),
}

_LUT_SIZE = 16384  # linear -> sRGB table; 0.2 sRGB levels per step in the deepest shadows


def _build_luts() -> tuple[np.ndarray, np.ndarray]:
    to_srgb = linear_to_srgb8(np.arange(_LUT_SIZE, dtype=np.float64) / (_LUT_SIZE - 1))
    return SRGB8_TO_LINEAR.astype(np.float32), to_srgb


_TO_LINEAR, _TO_SRGB = _build_luts()


@dataclass(frozen=True)
class SynthRecord:
    """What was done to one synthetic image (JSON-serialisable through `to_dict`)."""

    kind: str
    label: str
    strength_px: float  # px at a 2048-px long side: disk radius (defocus) or path length (motion; params
    #   extent_px: the path's end-to-end spread, also at 2048; mask kinds: subject_share, the runner's share of the
    #   frame)
    params: dict[str, float | str]

    def to_dict(self) -> dict[str, object]:
        """A plain dict for a JSON manifest."""
        return {
            "kind": self.kind,
            "label": self.label,
            "strength_px": self.strength_px,
            "params": dict(self.params),
        }


def strength_range(kind: str) -> tuple[float, float]:
    """Default sampling range of `kind`'s strength, px at a 2048-px long side."""
    _check_kind(kind)
    return _STRENGTH_RANGES[kind]


def _check_kind(kind: str) -> None:
    if kind not in KIND_LABELS:
        raise ValueError(f"unknown synthesis kind {kind!r}; known: {', '.join(KIND_LABELS)}")


# --------------------------------------------------------------------------------------------------
# Colour space helpers


def to_linear(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 sRGB to float32 linear light in [0, 1]."""
    return _TO_LINEAR[image]


def to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Float linear light (clipped to [0, 1]) to uint8 sRGB."""
    idx = np.clip(linear, 0.0, 1.0) * np.float32(_LUT_SIZE - 1) + np.float32(0.5)
    return _TO_SRGB[idx.astype(np.int32)]


_KNEE = 0.8  # linear value (sRGB ~231) above which values may stand for clipped, brighter light


def _expand_highlights(linear: np.ndarray, gain: float) -> np.ndarray:
    """Inverse tone curve: identity below the knee, rising smoothly to `gain` at 1.0.

    A clipped highlight stands for more light than 255 says; blurring the expanded values makes bright
    points bloom into discs and streaks as in real photos. `_compress_highlights` undoes it after the
    blur, so regions the blur leaves uniform come back unchanged.
    """
    if gain <= 1.0:
        return linear
    t = np.clip((linear - _KNEE) * (1.0 / (1.0 - _KNEE)), 0.0, None)
    return linear + np.float32(gain - 1.0) * t * t * t


def _compress_highlights(linear: np.ndarray, gain: float) -> np.ndarray:
    """The inverse of `_expand_highlights` (values past `gain` clip to 1, as a sensor would)."""
    if gain <= 1.0:
        return linear
    xs = np.linspace(_KNEE, 1.0, 513)
    ys = xs + (gain - 1.0) * ((xs - _KNEE) / (1.0 - _KNEE)) ** 3
    out = linear.copy()
    hi = out > _KNEE
    out[hi] = np.interp(out[hi], ys, xs, right=1.0).astype(np.float32)
    return out


def _draw_highlight_gain(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.3 else float(math.exp(rng.uniform(0.0, math.log(6.0))))


# --------------------------------------------------------------------------------------------------
# Kernels


def defocus_kernel(radius: float, edge: float = 0.0, soft: float = 0.0) -> np.ndarray:
    """Anti-aliased pillbox (disk) PSF of `radius` px, normalised to sum 1.

    Args:
        radius: disk radius in pixels (values below 0.5 give a delta).
        edge: brightness tilt towards the rim: >0 a brighter rim (over-corrected spherical
            aberration, "soap bubble" bokeh), <0 a softer rim; 0 is a flat disk.
        soft: Gaussian softening of the rim, as a fraction of the radius (lens aberrations; real
            defocus discs have a rim a few pixels wide).
    """
    if radius < 0.5:
        return np.ones((1, 1), np.float32)
    sigma = soft * radius
    n = math.ceil(radius + 0.5 + 3.0 * sigma)
    ss = 5  # supersampling for the anti-aliased rim
    m = (2 * n + 1) * ss
    coords = (np.arange(m, dtype=np.float64) - (m - 1) / 2.0) / ss  # exactly symmetric about 0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    rr = np.sqrt(xx * xx + yy * yy)
    inside = (rr <= radius).astype(np.float64)
    profile = 1.0 + edge * ((rr / radius) ** 2 - 0.5)
    fine = inside * np.clip(profile, 0.05, None)
    k = fine.reshape(2 * n + 1, ss, 2 * n + 1, ss).sum(axis=(1, 3))
    if sigma >= 0.3:
        k = cv2.GaussianBlur(k, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return (k / k.sum()).astype(np.float32)


def _render_path(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Splat a sampled trajectory (equal time steps) into a normalised PSF, centred on its centroid."""
    xs = xs - xs.mean()
    ys = ys - ys.mean()
    half = math.ceil(float(max(np.abs(xs).max(initial=0.0), np.abs(ys).max(initial=0.0)))) + 1
    size = 2 * half + 1
    k = np.zeros((size, size), np.float64)
    x = xs + half
    y = ys + half
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = x - x0
    fy = y - y0
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(k, (np.minimum(y0 + dy, size - 1), np.minimum(x0 + dx, size - 1)), w)
    return (k / k.sum()).astype(np.float32)


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Straight, constant-speed motion PSF: a 1-D line of `length` px at `angle_deg` (0 = horizontal)."""
    if length < 1.0:
        return np.ones((1, 1), np.float32)
    n = max(64, int(length * 8))
    t = (np.arange(n, dtype=np.float64) + 0.5) / n - 0.5
    a = math.radians(angle_deg)
    xs = t * length * math.cos(a)
    ys = -t * length * math.sin(a)  # image rows grow downwards; angles count counter-clockwise
    if abs(math.sin(a)) < 1e-9:
        ys = np.zeros_like(xs)
    if abs(math.cos(a)) < 1e-9:
        xs = np.zeros_like(ys)
    return _render_path(xs, ys)


def shake_path(
    rng: np.random.Generator, length: float, curvature: float = 1.0
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """A hand-shake trajectory of total path length `length` px, sampled at equal time steps.

    Hand tremor is oscillatory: within one exposure the camera follows part of a swing, so the path
    curves and slows at its turning points (where real shake kernels are brightest and edges show
    double), on top of a drift along the main direction and a little jitter. `curvature` scales the
    oscillating part against the drift (0 gives a straight line with uneven speed). Real handheld
    shake is mostly horizontal, less often vertical.

    Returns:
        x and y sample positions, and the drawn parameters.
    """
    n = max(256, int(length * 8))
    t = np.linspace(0.0, 1.0, n)
    px = np.zeros(n)
    py = np.zeros(n)
    for k in (1, 2):
        for comp in (px, py):
            freq = rng.uniform(0.1, 0.6) * k
            amp = rng.uniform(0.3, 1.0) / (k * k)
            comp += amp * np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))
    aspect = rng.uniform(0.1, 0.8)  # swings are elongated along the main direction
    py *= aspect
    drift = rng.uniform(0.2, 1.5)
    px = curvature * px + drift * t
    py = curvature * py
    # Tremor jitter: smoothed random walk, small against the swings.
    jitter = rng.normal(0.0, 1.0, (2, n)).cumsum(axis=1)
    sigma = max(2, n // 40)
    kernel = np.exp(-0.5 * (np.arange(-3 * sigma, 3 * sigma + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    jx = np.convolve(np.pad(jitter[0], 3 * sigma, mode="edge"), kernel, mode="valid")
    jy = np.convolve(np.pad(jitter[1], 3 * sigma, mode="edge"), kernel, mode="valid")
    jscale = rng.uniform(0.0, 0.04) / max(float(np.ptp(jx)), float(np.ptp(jy)), 1e-9)
    px = px + jx * jscale
    py = py + jy * jscale
    # main direction of the path so far, turned to the drawn one
    cur = (
        math.atan2(py[-1] - py[0], px[-1] - px[0])
        if abs(px[-1] - px[0]) + abs(py[-1] - py[0]) > 1e-9
        else 0.0
    )
    u = rng.random()
    if u < 0.55:
        angle_deg = rng.uniform(-30.0, 30.0) + (180.0 if rng.random() < 0.5 else 0.0)
    elif u < 0.75:
        angle_deg = rng.uniform(60.0, 120.0) + (180.0 if rng.random() < 0.5 else 0.0)
    else:
        angle_deg = rng.uniform(0.0, 360.0)
    rot = math.radians(angle_deg) - cur
    c, s = math.cos(rot), math.sin(rot)
    xs, ys = c * px - s * py, -(s * px + c * py)  # image rows grow downwards: angles count anticlockwise
    seg = float(np.hypot(np.diff(xs), np.diff(ys)).sum())
    if seg < 1e-9:
        xs, ys, seg = t * math.cos(math.radians(angle_deg)), -t * math.sin(math.radians(angle_deg)), 1.0
    scale = length / seg
    xs, ys = xs * scale, ys * scale
    extent = float(math.hypot(float(np.ptp(xs)), float(np.ptp(ys))))
    params: dict[str, float] = {
        "angle": round(float(angle_deg) % 360.0, 2),
        "curvature": round(curvature, 3),
        "aspect": round(float(aspect), 3),
        "drift": round(float(drift), 3),
        "extent_px": round(extent, 2),
    }
    return xs, ys, params


# --------------------------------------------------------------------------------------------------
# Filtering and compositing


def _convolve(linear: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (cv2 picks direct or DFT filtering by kernel size), reflecting at the borders."""
    if kernel.shape == (1, 1):
        return linear.copy()
    # filter2D correlates: flip so an asymmetric PSF is applied as a convolution.
    return cv2.filter2D(
        linear, cv2.CV_32F, np.ascontiguousarray(kernel[::-1, ::-1]), borderType=cv2.BORDER_REFLECT_101
    )


def _gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def _fill_hole(linear: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pull-push fill: colours of pixels where `valid` is 0, smoothly interpolated from valid ones."""
    levels: list[tuple[np.ndarray, np.ndarray]] = []
    c: np.ndarray = linear * valid[..., None]
    w: np.ndarray = valid.astype(np.float32)
    while min(w.shape[:2]) > 8:
        levels.append((c, w))
        c = cv2.resize(c, (max(1, c.shape[1] // 2), max(1, c.shape[0] // 2)), interpolation=cv2.INTER_AREA)
        w = cv2.resize(w, (max(1, w.shape[1] // 2), max(1, w.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    est = c / np.maximum(w, 1e-6)[..., None]
    if float(w.max(initial=0.0)) <= 0:
        est[:] = linear.reshape(-1, 3).mean(axis=0)
    for c_l, w_l in reversed(levels):
        up = cv2.resize(est, (c_l.shape[1], c_l.shape[0]), interpolation=cv2.INTER_LINEAR)
        wl = np.clip(w_l, 0.0, 1.0)[..., None]
        est = c_l / np.maximum(w_l, 1e-6)[..., None] * wl + up * (1.0 - wl)
    return est.astype(np.float32)


def _prepare_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {np.asarray(mask).shape}")
    m = m.astype(np.float32)
    if m.size and float(m.max()) > 1.0 + 1e-6:
        m = m / 255.0
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(m, 0.0, 1.0)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, k)


def _blur_subject(
    linear: np.ndarray, mask: np.ndarray, kernel: np.ndarray, s1024: float
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Blurred subject over a sharp background; returns linear result and the changed-pixel weight."""
    dil = max(1, round(4.0 * s1024))  # covers mask misses at hair and limb edges
    feather = max(0.7, 1.5 * s1024)
    alpha = _gaussian(_dilate(mask, dil), feather)
    plate = _background_plate(linear, mask, s1024)
    premult = _convolve(linear * alpha[..., None], kernel)
    alpha_b = np.clip(_convolve(alpha, kernel), 0.0, 1.0)
    out = premult + plate * (1.0 - alpha_b)[..., None]
    return out, alpha_b, {"mask_dilate_px": float(dil), "mask_feather_px": round(feather, 2)}


def _sharp_subject(
    linear: np.ndarray, mask: np.ndarray, blurred_plate: np.ndarray, s1024: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sharp subject over a blurred background plate; returns linear result and subject alpha."""
    alpha = np.clip(_gaussian(mask, max(0.5, 0.8 * s1024)), 0.0, 1.0)
    outside = _dilate(1.0 - mask, max(1, round(1.5 * s1024)))
    alpha = np.where(outside < 0.5, 1.0, alpha).astype(np.float32)  # interior stays exactly the source
    out = linear * alpha[..., None] + blurred_plate * (1.0 - alpha)[..., None]
    return out, alpha


def _background_plate(linear: np.ndarray, mask: np.ndarray, s1024: float) -> np.ndarray:
    """The background with the subject (and its mixed edge pixels) filled in from its surroundings.

    Blurring this plate instead of the photo keeps the person's colours out of the blurred background.
    """
    hole = _dilate(mask, max(2, round(3.0 * s1024)))
    soft = np.maximum(hole, _gaussian(hole, max(1.0, 2.0 * s1024)))
    fill = _fill_hole(linear, 1.0 - hole)
    return linear * (1.0 - soft)[..., None] + fill * soft[..., None]


def _depth_ramp_blur(
    plate: np.ndarray, mask: np.ndarray, radius: float, rng: np.random.Generator, edge: float, soft: float
) -> tuple[np.ndarray, dict[str, float]]:
    """Background defocus that grows with distance from the subject's ground line (feet row).

    The ground at the runner's feet is in the focal plane; blur grows towards the far background
    (and, less, towards the near foreground), as in real shallow depth-of-field photos.
    """
    h = plate.shape[0]
    rows = np.nonzero(mask.max(axis=1) > 0.5)[0]
    feet = float(rows.max()) if rows.size else float(h - 1)
    ramp = rng.uniform(0.12, 0.35) * h
    near_ratio = rng.uniform(0.3, 0.8)
    levels = [radius * f for f in (0.2, 0.55, 1.0)]
    blurred = [_convolve(plate, defocus_kernel(r, edge, soft)) for r in levels]
    y = np.arange(h, dtype=np.float32)
    d = np.where(y <= feet, (feet - y) / ramp, (y - feet) / ramp * near_ratio)
    rel = np.clip(0.2 + d, 0.2, 1.0)  # relative radius per row, never below 0.2
    w = np.empty((h, 3), np.float32)
    # piecewise-linear weights over the three levels
    lo = rel <= 0.55
    t = np.where(lo, (rel - 0.2) / 0.35, (rel - 0.55) / 0.45)
    w[:, 0] = np.where(lo, 1 - t, 0)
    w[:, 1] = np.where(lo, t, 1 - t)
    w[:, 2] = np.where(lo, 0, t)
    out = sum(b * w[:, i][:, None, None] for i, b in enumerate(blurred))
    return np.asarray(out, np.float32), {"ramp_frac": round(ramp / h, 3), "feet_row_frac": round(feet / h, 3)}


# --------------------------------------------------------------------------------------------------
# Public synthesis


def synthesize(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    strength_px: float | None = None,
    mask: np.ndarray | None = None,
    min_strength_px: float = 0.0,
) -> tuple[np.ndarray, SynthRecord]:
    """Apply one synthetic blur (or hard-negative effect) to a sharp RGB image.

    Args:
        image: HxWx3 uint8 RGB, any size (blur is scaled by long side / 2048).
        kind: a key of `KIND_LABELS`.
        rng: the random source (every random choice is drawn from it).
        strength_px: blur size at a 2048-px long side; None draws from `strength_range(kind)`.
        mask: HxW person mask (1.0 or 255 = person), required for `MASK_KINDS`.
        min_strength_px: when drawing the strength, start the range here if that is above its low end
            (e.g. training only on visible blur); ignored when `strength_px` is given.

    Returns:
        The new HxWx3 uint8 RGB image (not yet finished: call `finish`) and its record.

    Raises:
        ValueError: for an unknown kind, a bad image, or a mask kind without a usable mask.
    """
    _check_kind(kind)
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    m: np.ndarray | None = None
    if kind in MASK_KINDS:
        if mask is None:
            raise ValueError(f"kind {kind!r} needs a person mask")
        m = (_prepare_mask(mask, (h, w)) >= 0.5).astype(np.float32)  # soft segmentation edges would ghost
        if float(m.mean()) < 1e-4:
            raise ValueError(f"kind {kind!r} needs a person mask, but the mask is empty")
    if strength_px is None:
        lo, hi = _STRENGTH_RANGES[kind]
        lo = min(max(lo, min_strength_px), hi)
        strength = float(rng.uniform(lo, hi)) if hi > lo else lo
    else:
        strength = float(strength_px)
        if strength < 0 or not math.isfinite(strength):
            raise ValueError(f"strength_px must be a finite value >= 0, got {strength_px!r}")
    scale = max(h, w) / REFERENCE_LONG_SIDE
    px = strength * scale  # strength at this image's size
    s1024 = max(h, w) / 1024.0  # mask feathering and dilation scale with the image, not the blur
    params: dict[str, float | str] = {"scale": round(scale, 5)}
    if m is not None:   # how much of the frame the runner covers (recall of the subject kinds depends on it)
        params["subject_share"] = round(float(m.mean()), 4)

    if kind == "clean":
        return img.copy(), SynthRecord(kind, KIND_LABELS[kind], 0.0, params)
    if kind == "high_iso":
        out = _high_iso(img, rng, params)
        return out, SynthRecord(kind, KIND_LABELS[kind], 0.0, params)

    gain = _draw_highlight_gain(rng)
    params["highlight_gain"] = round(gain, 3)
    linear = to_linear(img)
    exp = _expand_highlights(linear, gain)

    if kind == "defocus":
        edge, soft = _draw_disk_shape(rng, params)
        res = _convolve(exp, defocus_kernel(px, edge, soft))
        if rng.random() < 0.35:  # depth varies across the frame: blend towards a smaller disk
            small = float(rng.uniform(0.55, 0.85))
            ang = float(rng.uniform(0, 2 * math.pi))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            proj = (xx - w / 2) * math.cos(ang) + (yy - h / 2) * math.sin(ang)
            t = np.clip(proj / max(np.abs(proj).max(), 1.0) * 0.5 + 0.5, 0, 1)[..., None]
            res = res * (1 - t) + _convolve(exp, defocus_kernel(px * small, edge, soft)) * t
            params["depth_min_ratio"] = round(small, 3)
            params["depth_angle"] = round(math.degrees(ang), 1)
        return to_srgb8(_compress_highlights(res, gain)), SynthRecord(
            kind, KIND_LABELS[kind], strength, params
        )

    if kind == "linear_motion":
        angle = float(rng.uniform(0.0, 180.0))
        params["angle"] = round(angle, 2)
        res = _convolve(exp, motion_kernel(px, angle))
        return to_srgb8(_compress_highlights(res, gain)), SynthRecord(
            kind, KIND_LABELS[kind], strength, params
        )

    if kind == "shake":
        curv = float(rng.uniform(0.2, 1.3))
        xs, ys, sp = shake_path(rng, px, curv)
        params.update(sp)
        params["extent_px"] = round(float(sp["extent_px"]) / scale, 2)  # at 2048, like strength
        res = _convolve(exp, _render_path(xs, ys))
        return to_srgb8(_compress_highlights(res, gain)), SynthRecord(
            kind, KIND_LABELS[kind], strength, params
        )

    assert m is not None
    if kind in ("subject_motion", "subject_defocus"):
        if kind == "subject_defocus":
            edge, soft = _draw_disk_shape(rng, params)
            kernel = defocus_kernel(px, edge, soft)
        else:
            kernel, kp = _subject_motion_kernel(rng, px)
            params.update(kp)
            params["extent_px"] = round(kp["extent_px"] / scale, 2)  # at 2048, like strength (and shake's)
        res, changed, mp = _blur_subject(exp, m, kernel, s1024)
        params.update(mp)
        out = to_srgb8(_compress_highlights(res, gain))
        keep = changed <= 1e-4
        out[keep] = img[keep]
        return out, SynthRecord(kind, KIND_LABELS[kind], strength, params)

    plate = _background_plate(exp, m, s1024)
    if kind == "bokeh":
        edge, soft = _draw_disk_shape(rng, params)
        if rng.random() < 0.6:
            blurred, rp = _depth_ramp_blur(plate, m, px, rng, edge, soft)
            params.update(rp)
        else:
            blurred = _convolve(plate, defocus_kernel(px, edge, soft))
    else:  # panning: the camera follows the runner, the background streaks along the pan
        spread = 12.0 if rng.random() < 0.85 else 30.0  # a pan follows the runner: near horizontal
        angle = float(rng.uniform(-spread, spread))
        params["angle"] = round(angle % 180.0, 2)
        blurred = _convolve(plate, motion_kernel(px, angle))
    res, alpha = _sharp_subject(exp, m, blurred, s1024)
    out = to_srgb8(_compress_highlights(res, gain))
    keep = alpha >= 1.0
    out[keep] = img[keep]
    return out, SynthRecord(kind, KIND_LABELS[kind], strength, params)


def _draw_disk_shape(rng: np.random.Generator, params: dict[str, float | str]) -> tuple[float, float]:
    """Rim brightness tilt and rim softness of a defocus disk (recorded in `params`)."""
    edge = float(rng.uniform(-0.4, 0.5))
    soft = float(rng.uniform(0.0, 0.15))
    params["disk_edge"] = round(edge, 3)
    params["disk_soft"] = round(soft, 3)
    return edge, soft


def _subject_motion_kernel(rng: np.random.Generator, length: float) -> tuple[np.ndarray, dict[str, float]]:
    """A runner's own motion: mostly near-horizontal, straight or gently curved, uneven speed."""
    if rng.random() < 0.6:
        angle = (0.0 if rng.random() < 0.5 else 180.0) + float(rng.uniform(-25.0, 25.0))
    else:
        angle = float(rng.uniform(0.0, 360.0))
    curv = float(rng.uniform(0.0, 0.5))
    xs, ys, sp = shake_path(rng, length, curv)
    rot = math.radians(angle - float(sp["angle"]))  # turn the path's main direction to `angle`
    c, s = math.cos(rot), math.sin(rot)
    xr, yr = c * xs + s * ys, -s * xs + c * ys
    return _render_path(xr, yr), {
        "angle": round(angle % 360.0, 2),
        "curvature": round(curv, 3),
        "extent_px": round(float(sp["extent_px"]), 2),
    }


# --------------------------------------------------------------------------------------------------
# Noise, finishing


def _noise_field(
    shape: tuple[int, int], rng: np.random.Generator, chroma: float, corr_sigma: float
) -> np.ndarray:
    """Unit-variance noise: luminance + chroma mix, optionally spatially correlated (demosaicing)."""
    h, w = shape
    lum = rng.standard_normal((h, w, 1), dtype=np.float32)
    col = rng.standard_normal((h, w, 3), dtype=np.float32)
    n = lum * np.float32(math.sqrt(1.0 - chroma)) + col * np.float32(math.sqrt(chroma))
    if corr_sigma > 0:
        n = _gaussian(n, corr_sigma)
        # a Gaussian of sigma s keeps 1 / (2 sqrt(pi) s) of the variance per axis
        n *= np.float32(2.0 * math.sqrt(math.pi) * corr_sigma)
    return n


def _add_sensor_noise(
    image: np.ndarray, rng: np.random.Generator, shot: float, read: float, chroma: float, corr: float
) -> np.ndarray:
    """Signal-dependent (Poisson-Gaussian) noise in linear light: variance = shot * x + read."""
    linear = to_linear(image)
    sigma = np.sqrt(linear * np.float32(shot) + np.float32(read))
    noisy = linear + sigma * _noise_field(image.shape[:2], rng, chroma, corr)
    return to_srgb8(noisy)


def _high_iso(image: np.ndarray, rng: np.random.Generator, params: dict[str, float | str]) -> np.ndarray:
    shot = float(math.exp(rng.uniform(math.log(1.5e-3), math.log(8e-3))))
    read = shot * float(rng.uniform(0.002, 0.03))
    chroma = float(rng.uniform(0.2, 0.7))
    corr = float(rng.uniform(0.5, 1.1)) if rng.random() < 0.6 else 0.0
    params.update(
        {
            "iso_shot": round(shot, 6),
            "iso_read": round(read, 8),
            "iso_chroma": round(chroma, 3),
            "iso_corr_sigma": round(corr, 3),
        }
    )
    return _add_sensor_noise(image, rng, shot, read, chroma, corr)


def lens_softness(
    image: np.ndarray, rng: np.random.Generator, max_sigma_px: float, scale: float
) -> tuple[np.ndarray, dict[str, float]]:
    """Mild optical softness of a real lens, the same for every class (an option of the finishing).

    Half of the images get a Gaussian in linear light with sigma drawn from [max/4, max] px at a 2048-px long
    side (`scale` = this image's long side / 2048); the rest stay as they are. Well below the visible blur
    threshold (a sigma of 2 px is about a 4-px disk, half the card's 8 px), it tells the model that a slightly
    soft photo is still sharp. Measured as a stand-in for the training crop's softening, it does not replace
    it (MODEL_CARD.md); off by default.

    Returns:
        The image and {"lens_sigma_px": sigma at a 2048-px long side, 0 if none}.
    """
    if rng.random() >= 0.5:
        return image, {"lens_sigma_px": 0.0}
    sigma = float(rng.uniform(max_sigma_px / 4.0, max_sigma_px))
    out = to_srgb8(_gaussian(to_linear(np.asarray(image)), sigma * scale))
    return out, {"lens_sigma_px": round(sigma, 3)}


def veil(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A bright veil of haze, mist or fog over the whole scene, in linear light: x * t + A * (1 - t).

    The transmission `t` (0.2-0.7) is the share of the scene's own light that gets through, `A` (0.6-0.95, slightly
    blue) the airlight; on half of the images the veil thickens towards the top of the frame, as distance does.
    Contrast drops but every edge stays where it was, so a veiled image keeps its label: this is a finishing step for
    every class alike (trainer.dataset `Job.veil`), so that low contrast is never read as blur. Measured before it
    existed: the shipped pair called 51 of 96 held-out sharp race photos motion-blurred under a veil of t = 0.25.
    """
    lin = to_linear(np.asarray(image))
    t = float(rng.uniform(0.2, 0.7))
    level = float(rng.uniform(0.6, 0.95))
    blue = float(rng.uniform(0.0, 0.06))
    airlight = np.array([level - blue, level - blue / 2, level], dtype=np.float32)
    gradient = bool(rng.random() < 0.5)
    if gradient:  # t at the top of the frame, up to t + 0.35 at the bottom
        rows = np.linspace(0.0, 1.0, lin.shape[0], dtype=np.float32)[:, None, None]
        trans = np.minimum(1.0, t + 0.35 * rows)
    else:
        trans = np.float32(t)
    out = lin * trans + airlight * (1.0 - trans)
    params = {"veil_t": round(t, 4), "veil_level": round(level, 4), "veil_blue": round(blue, 4),
              "veil_gradient": float(gradient)}
    return to_srgb8(out), params


@dataclass(frozen=True)
class Sharpening:
    """The finishing's output sharpening: an unsharp mask in sRGB, as raw converters and export dialogs apply it.

    `share` of the examples get it, with an amount and a Gaussian sigma (px at the working size) drawn
    uniformly from the ranges."""

    share: float = 0.3
    amount: tuple[float, float] = (0.15, 0.6)
    sigma: tuple[float, float] = (0.6, 1.3)


MILD_SHARPENING = Sharpening()  # every dataset's finishing (the shipped recipe)
WIDE_AMOUNT = (0.3, 1.5)  # `wide_sharpening`: up to a strong export sharpening (150%)
WIDE_SIGMA = (0.5, 2.0)


def wide_sharpening(share: float) -> Sharpening:
    """Output sharpening over the range real exports show, from mild to strong, on `share` of the examples."""
    if not 0 < share <= 1:
        raise ValueError(f"sharpening share must be in (0, 1], got {share}")
    return Sharpening(share, WIDE_AMOUNT, WIDE_SIGMA)


def finish(
    image: np.ndarray, rng: np.random.Generator, sharpening: Sharpening = MILD_SHARPENING
) -> tuple[bytes, dict[str, float]]:
    """The one finishing step for every class: sensor noise, optional sharpening, JPEG encode.

    Its parameters are drawn from `rng` alone, never from the kind, so noise and compression cannot
    become a shortcut to the label. The noise is drawn before the sharpening, so another `sharpening`
    leaves it as it was; the JPEG quality is drawn after it (the same distribution, not always the same
    value).

    Returns:
        JPEG bytes and the drawn parameters.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
    u = rng.random()
    if u < 0.25:  # nearly clean (low ISO, good light)
        shot = float(rng.uniform(0.0, 2e-5))
    elif u < 0.8:
        shot = float(math.exp(rng.uniform(math.log(2e-5), math.log(5e-4))))
    else:  # sometimes strong, so "noisy" is never only the hard-negative high-ISO class
        shot = float(math.exp(rng.uniform(math.log(5e-4), math.log(2.5e-3))))
    read = shot * float(rng.uniform(0.001, 0.02))
    chroma = float(rng.uniform(0.05, 0.5))
    corr = float(rng.uniform(0.4, 0.9)) if rng.random() < 0.5 else 0.0
    out = _add_sensor_noise(img, rng, shot, read, chroma, corr) if shot > 0 else img
    sharpen = float(rng.uniform(*sharpening.amount)) if rng.random() < sharpening.share else 0.0
    sharpen_sigma = float(rng.uniform(*sharpening.sigma))
    if sharpen > 0:
        f = out.astype(np.float32)
        f = f + sharpen * (f - _gaussian(f, sharpen_sigma))
        out = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(70, 98))
    subsampling = 2 if rng.random() < 0.7 else 0  # 4:2:0 as most cameras, else 4:4:4
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    params = {
        "noise_shot": round(shot, 8),
        "noise_read": round(read, 10),
        "noise_chroma": round(chroma, 4),
        "noise_corr_sigma": round(corr, 4),
        "sharpen_amount": round(sharpen, 4),
        "sharpen_sigma": round(sharpen_sigma, 4) if sharpen > 0 else 0.0,
        "jpeg_quality": float(quality),
        "jpeg_subsampling": float(subsampling),
    }
    return buf.getvalue(), params


# --------------------------------------------------------------------------------------------------
# Contact sheet


def contact_sheet(
    items: list[tuple[np.ndarray | str, str]], out_path: str, thumb: int = 160, columns: int = 8
) -> None:
    """Save a JPEG grid of thumbnails, each with its caption underneath.

    Args:
        items: (RGB uint8 array or image file path, caption) pairs.
        out_path: JPEG file to write (its folder is created).
        thumb: thumbnail box side in px.
        columns: thumbnails per row.
    """
    if not items:
        raise ValueError("contact_sheet needs at least one item")
    columns = max(1, min(columns, len(items)))
    font = ImageFont.load_default(size=max(9, thumb // 14))
    line_h = max(9, thumb // 14) + 3
    cap_h = 2 * line_h + 4
    rows = (len(items) + columns - 1) // columns
    pad = 4
    sheet = Image.new("RGB", (columns * (thumb + pad) + pad, rows * (thumb + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (src, caption) in enumerate(items):
        if isinstance(src, str):
            with Image.open(src) as im:
                tile = ImageOps.exif_transpose(im).convert("RGB")
        else:
            tile = Image.fromarray(np.asarray(src, dtype=np.uint8), "RGB")
        tile.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        col, row = i % columns, i // columns
        x0 = pad + col * (thumb + pad)
        y0 = pad + row * (thumb + cap_h + pad)
        sheet.paste(tile, (x0 + (thumb - tile.width) // 2, y0 + (thumb - tile.height) // 2))
        for j, line in enumerate(_wrap(caption, draw, font, thumb)[:2]):
            draw.text((x0, y0 + thumb + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, format="JPEG", quality=90)


def _wrap(
    text: str, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> list[str]:
    lines: list[str] = []
    cur = ""
    for word in text.split():
        cand = f"{cur} {word}".strip()
        if cur and draw.textlength(cand, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines
