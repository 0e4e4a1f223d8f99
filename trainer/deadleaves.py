"""Dead-leaves pictures: an unlimited supply of sharp, photo-like sources to pretrain the classifier on.

The network trained from scratch memorises its ~500 real source photos (models/MODEL_CARD.md), and a pretrained
backbone was the largest lever measured, but no clean pretrained weights can be had offline. Dead-leaves images
(opaque shapes of power-law sizes dropped on top of each other) share the scale-invariant edge and contrast
statistics of natural photos, show no one's likeness, carry no licence and never repeat, so blur learnt on them
cannot be a memorised photo. Each picture has a runner-like silhouette in front (a head, a torso, arms and legs
at a random stride) whose mask drives the subject and background kinds of `trainer.synthesis`, as a person mask
does on a real photo, plus thin lines (poles, wires, lettering strokes) and small specular highlights (bokeh
balls when defocused).

A corpus is written in the layout of the shared person masks (``OUT/images/X.png`` + ``OUT/masks/X.png``), so the
dataset code finds each picture's mask the same way. Pictures are PNG: the synthesis adds the JPEG finishing.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

#: Long side of a rendered picture: `trainer.dataset.WORK_LONG_SIDE`, where synthesis works anyway.
LONG_SIDE = 1024
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
_ASPECTS = (1.5, 1.5, 1.5, 1 / 1.5, 1 / 1.5, 4 / 3, 16 / 9)  # mostly 3:2 landscape and portrait, as exported


@dataclass(frozen=True)
class CorpusItem:
    """One written picture and its subject mask."""

    image: Path
    mask: Path


def _radii(rng: np.random.Generator, n: int, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """`n` radii with density proportional to r**-alpha on [r_min, r_max] (inverse CDF)."""
    u = rng.random(n)
    e = 1.0 - alpha
    return np.asarray((r_min**e + u * (r_max**e - r_min**e)) ** (1.0 / e))


def _palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """k base colours of one scene (0..255 RGB, float): mostly muted, a few saturated, a wide range of values."""
    hsv = np.stack([rng.random(k) * 180.0,
                    np.where(rng.random(k) < 0.3, rng.uniform(120, 255, k), rng.uniform(0, 110, k)),
                    np.clip(rng.beta(2.0, 2.0, k) * 255.0, 8, 250)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0].astype(np.float32)


def _colour(rng: np.random.Generator, palette: np.ndarray) -> tuple[float, float, float]:
    base = palette[rng.integers(len(palette))]
    c = np.clip(base * rng.uniform(0.55, 1.35) + rng.normal(0.0, 12.0, 3), 0, 255)
    return float(c[0]), float(c[1]), float(c[2])


def _textures(rng: np.random.Generator, shape: tuple[int, int], k: int) -> list[np.ndarray]:
    """`k` zero-mean texture fields of about unit amplitude (HxW float32) for one picture: fractal noise (grass,
    foliage, asphalt, knitwear), stripes and hard-edged bands at any angle and period (fences, shirts, railings,
    lettering), and fine grain. Motion blur shows as a direction in which texture is smeared and the other is kept;
    flat-coloured leaves only show it at their outlines."""
    h, w = shape
    out = []
    for _ in range(k):
        u = rng.random()
        if u < 0.45:  # 1/f^beta noise from white noise in the Fourier domain
            beta = rng.uniform(1.0, 2.2)
            fy = np.fft.fftfreq(h)[:, None]
            fx = np.fft.rfftfreq(w)[None, :]
            f = np.sqrt(fx * fx + fy * fy)
            f[0, 0] = 1.0
            spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (beta / 2)
            spec[0, 0] = 0.0
            field: np.ndarray = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
        elif u < 0.85:  # stripes: a grating at any angle, sine or hard-edged
            period = float(np.exp(rng.uniform(np.log(3.0), np.log(40.0))))
            t = rng.uniform(0.0, math.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            field = np.sin((xx * math.cos(t) + yy * math.sin(t)) * (2 * math.pi / period) + rng.uniform(0, 6.3))
            if rng.random() < 0.5:
                field = np.sign(field)
        else:  # fine grain: a speckle a pixel or two across
            field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), rng.uniform(0.6, 2.0))
        field = field - field.mean()
        out.append(np.clip(field / max(2.5 * float(field.std()), 1e-6), -1.0, 1.0).astype(np.float32))
    return out


def _leaves(
    canvas: np.ndarray, rng: np.random.Generator, palette: np.ndarray, coverage: float, r_min: float, r_max: float,
    alpha: float, max_shapes: int = 12000, texture: float = 0.0,
) -> None:
    """Draw opaque shapes back to front onto `canvas` (HxWx3 float32), anti-aliased, until their summed area is
    `coverage` times the canvas (4 leaves about 2% of the first colour showing).

    `texture` > 0: that share of the shapes carries one of a few texture fields (`_textures`) inside its outline,
    at its own contrast, instead of a flat colour; 0 (the committed pretrained weights' corpus) draws no more
    random numbers than before, so those pictures stay exactly as they were."""
    h, w = canvas.shape[:2]
    s = 1 << _SHIFT
    radii = _radii(rng, max_shapes, r_min, r_max, alpha)
    n = min(max_shapes, int(np.searchsorted(np.cumsum(math.pi * radii**2), coverage * h * w)) + 1)
    radii = radii[:n]
    cx = rng.uniform(-radii, w + radii)
    cy = rng.uniform(-radii, h + radii)
    kind = rng.random(n)
    squash = rng.uniform(0.2, 1.0, n)
    angle = rng.uniform(0.0, 180.0, n)
    base = palette[rng.integers(len(palette), size=n)]
    colours = np.clip(base * rng.uniform(0.55, 1.35, (n, 1)) + rng.normal(0.0, 12.0, (n, 3)), 0, 255).tolist()
    # texture: an id map (0 = flat) drawn with the same outlines, and a contrast per shape
    ids = None
    tex_id = [0] * n
    if texture > 0:
        fields = _textures(rng, (h, w), 6)
        tex_id = np.where(rng.random(n) < texture, rng.integers(1, len(fields) + 1, n), 0).tolist()
        levels = rng.uniform(0.1, 0.6, n)  # relative contrast of a textured shape
        ids = np.zeros((h, w), np.uint16)  # shape index + 1 of the top shape at each pixel
    for i, (r, x, y, k, q, a, c) in enumerate(zip((radii * s).round().astype(int).tolist(),
                                                  (cx * s).round().astype(int).tolist(),
                                                  (cy * s).round().astype(int).tolist(), kind.tolist(),
                                                  squash.tolist(), angle.tolist(), colours, strict=True)):
        r = max(1, r)
        targets: list[tuple[np.ndarray, Sequence[float] | float, int]] = [(canvas, c, cv2.LINE_AA)]
        if ids is not None:
            targets.append((ids, i + 1, cv2.LINE_8))  # never blended: an index, not a colour
        for img, col, line in targets:
            if k < 0.5:  # disk
                cv2.circle(img, (x, y), r, col, -1, line, _SHIFT)
            elif k < 0.8:  # ellipse at any angle
                cv2.ellipse(img, (x, y), (r, max(1, round(r * q))), a, 0, 360, col, -1, line, _SHIFT)
            else:  # rectangle at any angle (straight edges: banners, buildings, road markings)
                t = math.radians(a)
                dx, dy = r * math.cos(t), r * math.sin(t)
                ex, ey = -r * q * math.sin(t), r * q * math.cos(t)
                pts = np.array([[x - dx - ex, y - dy - ey], [x + dx - ex, y + dy - ey], [x + dx + ex, y + dy + ey],
                                [x - dx + ex, y - dy + ey]])
                cv2.fillPoly(img, [np.round(pts).astype(np.int32)], col, line, _SHIFT)
    if ids is not None:
        top = ids.astype(np.int64) - 1  # -1: the first colour still showing
        which = np.asarray([0] + tex_id, np.int64)[top + 1]  # texture field of the top shape (0: flat)
        amp = np.asarray([0.0] + levels.tolist(), np.float32)[top + 1]
        mod = np.ones((h, w), np.float32)
        for f, field in enumerate(fields, 1):
            sel = which == f
            mod[sel] += amp[sel] * field[sel]
        canvas *= mod[..., None]


def _lines(canvas: np.ndarray, rng: np.random.Generator, palette: np.ndarray, n: int) -> None:
    """Thin straight strokes: poles, wires, cables, the edges of lettering."""
    h, w = canvas.shape[:2]
    s = 1 << _SHIFT
    for _ in range(n):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        length = rng.uniform(0.02, 0.6) * max(h, w)
        a = rng.uniform(0, math.pi) if rng.random() < 0.6 else rng.choice([0.0, math.pi / 2])
        x1, y1 = x0 + length * math.cos(a), y0 + length * math.sin(a)
        cv2.line(canvas, (round(x0 * s), round(y0 * s)), (round(x1 * s), round(y1 * s)), _colour(rng, palette),
                 int(rng.integers(1, 4)), cv2.LINE_AA, _SHIFT)


def _highlights(canvas: np.ndarray, rng: np.random.Generator, n: int) -> None:
    """Small near-white specks (lamps, reflections): they bloom into discs or streaks when blurred."""
    h, w = canvas.shape[:2]
    s = 1 << _SHIFT
    for _ in range(n):
        v = rng.uniform(235, 255)
        cv2.circle(canvas, (round(rng.uniform(0, w) * s), round(rng.uniform(0, h) * s)),
                   max(1, round(rng.uniform(0.6, 3.0) * s)), (v, v, v * rng.uniform(0.9, 1.0)), -1, cv2.LINE_AA,
                   _SHIFT)


def _silhouette(shape: tuple[int, int], rng: np.random.Generator, height_frac: float, cx_frac: float) -> np.ndarray:
    """An anti-aliased 0..255 mask of one upright running figure (one connected region)."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    s = 1 << _SHIFT
    tall = height_frac * h
    cx = cx_frac * w
    # feet may be cut by the frame's lower edge, but at least 30% of the frame's height shows the figure
    foot = rng.uniform(0.85, min(1.15, 0.7 + height_frac)) * h
    top = foot - tall
    u = tall / 8.0  # a head is about an eighth of a body
    lean = rng.uniform(-0.25, 0.25)
    hip = (cx + lean * u, top + 4.1 * u)
    neck = (cx + lean * 2.2 * u, top + 1.25 * u)

    def pt(p: tuple[float, float]) -> tuple[int, int]:
        return round(p[0] * s), round(p[1] * s)

    def limb(a: tuple[float, float], b: tuple[float, float], width: float) -> None:
        cv2.line(mask, pt(a), pt(b), 255, max(1, round(width)), cv2.LINE_AA, _SHIFT)
        cv2.circle(mask, pt(b), max(1, round(width / 2 * s)), 255, -1, cv2.LINE_AA, _SHIFT)

    # torso: a polygon from shoulders to hips
    sw, hw = rng.uniform(0.85, 1.15) * u, rng.uniform(0.65, 0.9) * u
    torso = np.array([[neck[0] - sw, neck[1] + 0.25 * u], [neck[0] + sw, neck[1] + 0.25 * u],
                      [hip[0] + hw, hip[1]], [hip[0] - hw, hip[1]]]) * s
    cv2.fillPoly(mask, [np.round(torso).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(mask, pt((neck[0], neck[1] - 0.55 * u)), (round(0.42 * u * s), round(0.55 * u * s)),
                float(rng.uniform(-10, 10)), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)  # head, overlapping the neck
    limb(neck, (neck[0], neck[1] + 0.4 * u), 0.35 * u)
    stride = rng.uniform(0.2, 1.0)
    for side in (-1.0, 1.0):  # legs: thigh + shin, one forward and one back
        knee = (hip[0] + side * stride * 1.1 * u, hip[1] + 1.9 * u)
        ankle = (knee[0] - side * stride * 0.4 * u + rng.normal(0, 0.2) * u, foot - 0.15 * u)
        limb((hip[0] + side * 0.35 * u, hip[1]), knee, 0.55 * u)
        limb(knee, ankle, 0.4 * u)
        limb(ankle, (ankle[0] + rng.choice([-1.0, 1.0]) * 0.5 * u, foot), 0.25 * u)
        shoulder = (neck[0] + side * 0.85 * sw, neck[1] + 0.35 * u)  # arms swing against the legs
        elbow = (shoulder[0] - side * stride * 0.8 * u, shoulder[1] + 1.3 * u)
        hand = (elbow[0] + rng.uniform(-0.3, 0.9) * u, elbow[1] - rng.uniform(0.2, 1.0) * u)
        limb(shoulder, elbow, 0.32 * u)
        limb(elbow, hand, 0.28 * u)
    return mask


def _shading(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth multiplicative light field (0.55..1.35): sun, shade, vignetting."""
    h, w = shape
    coarse = rng.uniform(0.55, 1.35, (int(rng.integers(2, 5)), int(rng.integers(2, 5)))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


def render(
    rng: np.random.Generator, long_side: int = LONG_SIDE, texture: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One sharp dead-leaves picture with a running figure in front; `texture`: the share of leaves (scene and
    figure alike) with a texture inside instead of a flat colour (see `_leaves`).

    Returns:
        (HxWx3 uint8 RGB picture, HxW uint8 mask of the figure, 255 = figure).
    """
    aspect = float(rng.choice(_ASPECTS))
    if aspect >= 1:
        w, h = long_side, round(long_side / aspect)
    else:
        w, h = round(long_side * aspect), long_side
    palette = _palette(rng, int(rng.integers(3, 8)))
    scene: np.ndarray = np.empty((h, w, 3), np.float32)
    scene[:] = _colour(rng, palette)
    alpha = rng.uniform(2.3, 3.0)  # lower: more large smooth areas; higher: busier texture
    _leaves(scene, rng, palette, 4.0, 2.0, 0.4 * max(h, w), alpha, texture=texture)
    _lines(scene, rng, palette, int(rng.integers(0, 40)))
    if rng.random() < 0.4:  # a second, farther runner: part of the background, never of the mask
        other = _silhouette((h, w), rng, rng.uniform(0.15, 0.45), rng.uniform(0.05, 0.95)) / 255.0
        scene = scene * (1 - other[..., None]) + np.asarray(_colour(rng, palette), np.float32) * other[..., None]
    _highlights(scene, rng, int(rng.integers(0, 30)))
    scene *= _shading(rng, (h, w))

    # The subject: its own clothes and skin colours, texture at its own scale, lit like the scene.
    height = rng.uniform(0.35, 0.95)
    mask = _silhouette((h, w), rng, height, rng.uniform(0.2, 0.8))
    subject = np.empty((h, w, 3), np.float32)
    sub_palette = _palette(rng, int(rng.integers(2, 6)))
    subject[:] = _colour(rng, sub_palette)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = subject[y0:y1, x0:x1]  # texture only where the figure is: the cost follows its size
    _leaves(crop, rng, sub_palette, 4.0, 1.5, 0.25 * max(y1 - y0, x1 - x0), rng.uniform(2.3, 3.0),
            texture=texture)
    _lines(crop, rng, sub_palette, int(rng.integers(0, 12)))  # seams, stripes, bib edges
    subject *= _shading(rng, (h, w)) * rng.uniform(0.8, 1.2)
    a = (mask.astype(np.float32) / 255.0)[..., None]
    picture = np.clip(scene * (1 - a) + subject * a + 0.5, 0, 255).astype(np.uint8)
    return picture, mask


def _write_one(args: tuple[Path, str, int, float]) -> CorpusItem:
    out, name, seed, texture = args
    picture, mask = render(np.random.default_rng(seed), texture=texture)
    item = CorpusItem(out / "images" / f"{name}.png", out / "masks" / f"{name}.png")
    for arr, mode, dest in ((picture, "RGB", item.image), (mask, "L", item.mask)):
        tmp = dest.with_suffix(".tmp.png")  # written whole or not at all: a resumed corpus trusts what it finds
        Image.fromarray(arr, mode).save(tmp, format="PNG", compress_level=1)
        tmp.replace(dest)
    return item


def write_corpus(
    out_dir: Path,
    count: int,
    seed: int = 0,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    texture: float = 0.0,
) -> list[CorpusItem]:
    """Write `count` pictures and masks into `out_dir` (``images/dl_NNNNNN.png``, ``masks/...``); `texture`: see
    `render`.

    Picture k depends only on (seed, texture, k), so an interrupted corpus is completed by running this again:
    pictures already written are kept. Setting `stop` ends the rendering early (what is written stays). The seed and
    texture are written to ``corpus.json``; continuing a corpus with others raises ValueError instead of mixing two.
    """
    out = Path(out_dir)
    settings = {"seed": int(seed), "texture": float(texture)}
    recorded = out / "corpus.json"
    if recorded.is_file():
        was = json.loads(recorded.read_text(encoding="utf-8"))
        if was != settings:
            raise ValueError(f"{out} holds a dead-leaves corpus made with {was}, not {settings}: use another folder")
    elif texture != 0.0 and (out / "images").is_dir() and any((out / "images").glob("dl_*.png")):
        # written before corpus.json existed, so of flat leaves
        raise ValueError(f"{out} holds a dead-leaves corpus of flat leaves, not texture {texture}: use another folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(settings), encoding="utf-8")
    names = [f"dl_{k:06d}" for k in range(count)]
    seeds = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    todo = [(out, n, int(s), texture) for n, s in zip(names, seeds, strict=True)
            if not ((out / "images" / f"{n}.png").is_file() and (out / "masks" / f"{n}.png").is_file())]
    step = max(1, len(todo) // 10)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(todo) > 1 else None
    try:
        done = pool.map(_write_one, todo, chunksize=8) if pool else map(_write_one, todo)
        for i, _ in enumerate(done, 1):
            if progress and (i % step == 0 or i == len(todo)):
                progress(f"rendered {i}/{len(todo)} dead-leaves pictures")
            if stop is not None and stop.is_set():
                break
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return [CorpusItem(out / "images" / f"{n}.png", out / "masks" / f"{n}.png") for n in names]


def corpus_items(out_dir: Path) -> Sequence[CorpusItem]:
    """The pictures of a written corpus that have a mask, in name order."""
    out = Path(out_dir)
    return [CorpusItem(p, out / "masks" / p.name) for p in sorted((out / "images").glob("dl_*.png"))
            if p.stem[3:].isdigit() and (out / "masks" / p.name).is_file()]  # not a half-written .tmp.png
