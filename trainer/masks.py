"""Person masks for subject/background blur synthesis: shared masks, cached masks, offline segmentation.

Segmentation uses MediaPipe 0.10.14's legacy solutions, whose models ship inside the wheel (nothing is
downloaded): pose segmentation (one person, the most prominent) first, then selfie segmentation (all
people; the largest connected component is kept); with `nearest`, a clearly larger and taller
separate selfie region (a runner nearer than the pose person) replaces it. MediaPipe 0.10.14 needs
protobuf<5, which conflicts with onnx (protobuf>=6) in the training environment, so it lives in a
separate virtual environment and this module runs there as a script to cache masks as PNG:

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install --no-deps mediapipe==0.10.14
    /tmp/mpvenv/bin/pip install "protobuf>=4.25.3,<5" absl-py attrs flatbuffers matplotlib \
        numpy opencv-python-headless pillow
    /tmp/mpvenv/bin/python trainer/masks.py --out WORK/masks IMAGE...

The training process then reads the cache through `person_mask(..., mask_dir=WORK/masks)`. Without
MediaPipe, `segment_person` returns None and only shared or cached masks are used. This module imports
only numpy, OpenCV and Pillow (no other trainer module), so it runs as a plain script in that venv.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "MaskResult",
    "cached_mask_path",
    "is_subject",
    "largest_component",
    "load_cached_mask",
    "load_shared_mask",
    "main",
    "person_mask",
    "precompute_masks",
    "segment_person",
    "segmentation_available",
]

log = logging.getLogger(__name__)

#: Segmentation runs at most at this long side (the MediaPipe models work at 256 px anyway).
SEGMENT_LONG_SIDE = 1024
#: A component smaller than this fraction of the frame is not a person at all (segmentation noise).
MIN_PERSON_FRACTION = 0.005
#: A segmented runner must cover this much of the frame, and span this much of its height, to be the
#: photo's subject: blurring only a small far runner (or keeping only it sharp in front of a blurred
#: crowd at the same distance) would teach labels that nobody could see.
MIN_SUBJECT_FRACTION = 0.02
MIN_SUBJECT_HEIGHT = 0.3
#: A separate selfie-segmentation region this many times the pose person's area and height is a runner nearer than
#: the one the pose model followed (area falls with the square of distance); wider than NEARER_MAX_ASPECT times its
#: height or covering more than NEARER_MAX_FRACTION of the frame, it is a merged crowd instead (only with
#: `nearest`). Set by looking at the 45 race and bokeh photos where the area rule alone changed the subject
#: (MODEL_CARD.md, "The nearest runner as the subject").
NEARER_AREA_RATIO = 1.5
NEARER_HEIGHT_RATIO = 1.2
NEARER_MAX_ASPECT = 1.25
NEARER_MAX_FRACTION = 0.35

_mp_lock = threading.Lock()
_mp_state: dict[str, Any] = {}


def load_shared_mask(image_path: Path) -> np.ndarray | None:
    """The shared data set's mask for `image_path` (``.../images/X.jpg`` -> ``.../masks/X.png``), 0..1."""
    p = Path(image_path)
    if p.parent.name != "images":
        return None
    mask_path = p.parent.parent / "masks" / f"{p.stem}.png"
    if not mask_path.is_file():
        return None
    return _read_mask_png(mask_path)


def _read_mask_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    return arr / 255.0


def cached_mask_path(image_path: Path, mask_dir: Path) -> Path:
    """Where `precompute_masks` caches the mask of `image_path` (stable across machines)."""
    p = Path(image_path)
    key = "/".join(p.parts[-3:])  # e.g. race02/runff/X.jpg: unique for the shared layout
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return Path(mask_dir) / f"{p.stem}-{digest}.png"


def load_cached_mask(image_path: Path, mask_dir: Path) -> np.ndarray | None:
    """The cached mask of `image_path` in `mask_dir`, or None when there is none."""
    path = cached_mask_path(image_path, mask_dir)
    return _read_mask_png(path) if path.is_file() else None


def segmentation_available() -> bool:
    """Whether MediaPipe's bundled person segmentation can be used in this environment."""
    return _mediapipe() is not None


def _mediapipe() -> dict[str, Any] | None:
    """Lazily create the MediaPipe solutions once; None (and one warning) when unusable."""
    with _mp_lock:
        if "ok" in _mp_state:
            return _mp_state if _mp_state["ok"] else None
        try:
            from mediapipe.python.solutions import pose as mp_pose
            from mediapipe.python.solutions import selfie_segmentation as mp_selfie
        except ImportError as exc:
            log.info("MediaPipe not importable (%s): person segmentation unavailable", exc)
            _mp_state["ok"] = False
            return None
        try:
            # model_complexity=1 uses pose_landmark_full.tflite, which the wheel bundles (2 downloads).
            _mp_state["pose"] = mp_pose.Pose(
                static_image_mode=True, model_complexity=1, enable_segmentation=True
            )
            _mp_state["selfie"] = mp_selfie.SelfieSegmentation(model_selection=0)
        except (AttributeError, TypeError, ValueError, RuntimeError, OSError) as exc:
            # e.g. protobuf>=5 breaks 0.10.14's graph setup with an AttributeError
            log.warning(
                "MediaPipe is installed but unusable here (%s: %s); person segmentation "
                "unavailable (run trainer/masks.py in its own venv)",
                type(exc).__name__,
                exc,
            )
            _mp_state["ok"] = False
            return None
        _mp_state["ok"] = True
        return _mp_state


def segment_person(image: np.ndarray, nearest: bool = False) -> np.ndarray | None:
    """Offline person mask (float32 0..1, HxW) of the most prominent person, or None.

    None when MediaPipe is unavailable, or nobody prominent enough to be the subject is found.
    nearest=True lets a clearly nearer runner replace the pose model's person (`_combine_masks`;
    measured in MODEL_CARD.md, "The nearest runner as the subject", not the shipped recipe).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
    mp = _mediapipe()
    if mp is None:
        return None
    h, w = img.shape[:2]
    small = img
    if max(h, w) > SEGMENT_LONG_SIDE:
        f = SEGMENT_LONG_SIDE / max(h, w)
        small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small)
    with _mp_lock:  # the solution graphs are not re-entrant
        pose = getattr(mp["pose"].process(small), "segmentation_mask", None)
        selfie = getattr(mp["selfie"].process(small), "segmentation_mask", None)
    mask = _combine_masks(pose, selfie, nearest=nearest)
    if mask is None:
        return None
    m: np.ndarray = np.clip(mask, 0.0, 1.0)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    person = largest_component(m)
    return person if person is not None and is_subject(person) else None


def _combine_masks(
    pose: np.ndarray | None, selfie: np.ndarray | None, nearest: bool = False
) -> np.ndarray | None:
    """Pose segmentation (one person, clean edges) completed by selfie segmentation near it.

    Pose segmentation follows one person well but drops limbs its landmarks miss (a raised, waving
    hand); the selfie model finds them but merges neighbours. Selfie pixels within a short reach of
    the pose person are added; without a pose person, the selfie mask is used alone. The pose model
    may follow a runner behind the main one (already soft in the depth of field): with `nearest`,
    when the selfie model finds a separate runner clearly nearer (`_nearer_runner`), that runner is
    returned instead.
    """
    sm = None if selfie is None else np.asarray(selfie, dtype=np.float32)
    if pose is None or float((np.asarray(pose) > 0.5).mean()) < MIN_PERSON_FRACTION:
        return sm
    pm = np.asarray(pose, dtype=np.float32)
    if sm is None or sm.shape != pm.shape:
        return pm
    reach = max(3, round(max(pm.shape) * 0.03))
    near = cv2.dilate(
        (pm > 0.5).astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)),
    )
    combined = np.maximum(pm, np.where(near > 0, sm, 0.0)).astype(np.float32)
    if not nearest:
        return combined
    nearer = _nearer_runner(sm, near > 0, combined >= 0.5)
    return combined if nearer is None else nearer


def _nearer_runner(selfie: np.ndarray, reach: np.ndarray, person: np.ndarray) -> np.ndarray | None:
    """The selfie mask of a separate runner nearer than `person` (bool, the pose person), or None.

    Separate: at most a fifth of the region lies within `reach` of the pose person. Nearer: at least
    NEARER_AREA_RATIO times its area and NEARER_HEIGHT_RATIO times its height. The selfie model merges
    people standing close together, so a region wider than NEARER_MAX_ASPECT times its height, or
    covering more than NEARER_MAX_FRACTION of the frame, is a crowd (or background taken for one), not a
    runner, and is not used.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats((selfie >= 0.5).astype(np.uint8), connectivity=8)
    rows = np.nonzero(person.any(axis=1))[0]
    if count <= 1 or rows.size == 0:
        return None
    height = float(rows[-1] - rows[0] + 1)
    area = float(person.sum())
    in_reach = np.bincount(labels[reach], minlength=count)  # each region's pixels within reach, in one pass
    best, best_area = 0, 0.0
    for i in range(1, count):
        a = float(stats[i, cv2.CC_STAT_AREA])
        h = float(stats[i, cv2.CC_STAT_HEIGHT])
        if (
            a > best_area
            and a >= NEARER_AREA_RATIO * area
            and h >= NEARER_HEIGHT_RATIO * height
            and stats[i, cv2.CC_STAT_WIDTH] <= NEARER_MAX_ASPECT * h
            and a <= NEARER_MAX_FRACTION * selfie.size
            and in_reach[i] <= 0.2 * a
        ):
            best, best_area = i, a
    if best == 0:
        return None
    # the other regions go; soft edge values (< 0.5, label 0) stay for largest_component's ring
    return np.where((labels == best) | (labels == 0), selfie, 0.0).astype(np.float32)


def is_subject(mask: np.ndarray) -> bool:
    """Whether a person mask is large enough to be the photo's subject (see MIN_SUBJECT_*)."""
    binary = np.asarray(mask) >= 0.5
    rows = np.nonzero(binary.any(axis=1))[0]
    if rows.size == 0:
        return False
    height = (rows[-1] - rows[0] + 1) / binary.shape[0]
    return float(binary.mean()) >= MIN_SUBJECT_FRACTION and height >= MIN_SUBJECT_HEIGHT


def largest_component(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray | None:
    """Keep only the largest connected person region of a (soft) mask, with its soft edge; None if tiny."""
    m = np.asarray(mask, dtype=np.float32)
    if m.size and float(m.max()) > 1.0 + 1e-6:
        m = m / 255.0
    binary = (m >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = 1 + int(np.argmax(areas))
    if areas[best - 1] < MIN_PERSON_FRACTION * m.size:
        return None
    keep = (labels == best).astype(np.uint8)
    r = max(2, round(max(m.shape) * 0.006))  # room for the soft edge around the component
    near = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    # other components' pixels inside the ring are dropped, soft edge values of this one kept
    other = (binary > 0) & (keep == 0)
    out = np.where((near > 0) & ~other, m, 0.0).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def person_mask(
    image: np.ndarray, image_path: Path | None, mask_dir: Path | None = None
) -> np.ndarray | None:
    """The runner's mask at the image's size: shared mask, else cached mask, else segmentation.

    Only the largest connected person region is kept (the nearest runner in a race photo).

    Args:
        image: HxWx3 uint8 RGB.
        image_path: where the image came from (looks up shared and cached masks), or None.
        mask_dir: a cache written by `precompute_masks`, or None.
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    mask: np.ndarray | None = None
    if image_path is not None:
        mask = load_shared_mask(Path(image_path))
        if mask is None and mask_dir is not None:
            mask = load_cached_mask(Path(image_path), Path(mask_dir))
    if mask is None:
        return segment_person(img)
    if mask.shape != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    return largest_component(mask)


@dataclass(frozen=True)
class MaskResult:
    """The outcome of caching one image's mask."""

    image_path: Path
    mask_path: Path | None  # None when no person was found or the image failed
    error: str = ""


def precompute_masks(
    image_paths: Iterable[Path], out_dir: Path, overwrite: bool = False, nearest: bool = False
) -> list[MaskResult]:
    """Segment each image and cache its person mask as an 8-bit PNG in `out_dir` (a work folder).

    `nearest` as in `segment_person`; a cache holds one kind (use another folder for the other).

    A bad image or an image without a person is reported in its result; the rest go on.

    Raises:
        RuntimeError: when person segmentation is unavailable in this environment.
    """
    if not segmentation_available():
        raise RuntimeError(
            "person segmentation is unavailable: run this in a venv with mediapipe==0.10.14 and "
            "protobuf<5 (see trainer/masks.py's docstring)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[MaskResult] = []
    for raw in image_paths:
        path = Path(raw)
        target = cached_mask_path(path, out)
        if target.is_file() and not overwrite:
            results.append(MaskResult(path, target))
            continue
        try:
            with Image.open(path) as im:
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            results.append(MaskResult(path, None, f"unreadable image: {exc}"))
            continue
        mask = segment_person(rgb, nearest=nearest)
        if mask is None:
            target.unlink(missing_ok=True)  # a stale mask from an earlier run (only with overwrite)
            results.append(MaskResult(path, None, "no prominent person found"))
            continue
        tmp = target.with_suffix(".tmp.png")
        Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").save(tmp)
        tmp.replace(target)
        results.append(MaskResult(path, target))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: cache person masks for the given images (run where MediaPipe works)."""
    parser = argparse.ArgumentParser(description="Cache person masks (PNG) for blur synthesis.")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--out", required=True, type=Path, help="mask cache folder (a work folder)")
    parser.add_argument("--overwrite", action="store_true", help="recompute masks already cached")
    parser.add_argument(
        "--subject",
        choices=("nearest", "pose"),
        default="pose",
        help="pose: the pose model's person, completed by selfie segmentation near it (default, the shipped "
        "recipe); nearest: a separate selfie region clearly larger and taller replaces it (measured, not shipped)",
    )
    args = parser.parse_args(argv)
    try:
        results = precompute_masks(
            args.images, args.out, overwrite=args.overwrite, nearest=args.subject == "nearest"
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = sum(r.mask_path is not None for r in results)
    for r in results:
        if r.mask_path is None:
            print(f"{r.image_path}: {r.error}", file=sys.stderr)
    print(f"{done}/{len(results)} masks in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
