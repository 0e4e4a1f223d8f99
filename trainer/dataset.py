"""Dataset preparation: find labelled photos, split by group, add synthetic and augmented examples, write ImageFolder.

Order matters: the train/validation split is made on groups (bursts or scenes) of *originals* first; only
then are augmented copies and synthetic blur made, each from an original of its own split, so nothing
derived from a validation photo is ever trained on.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from engine.errors import UnreadableImageError
from engine.model import PRODUCT_CLASSES, SHARP
from engine.preprocess import TRAIN_REDUCING_GAP, InputSpec, is_image_path, open_image, to_model_image

#: The original plan's folder names, then the class names themselves (matched case-insensitively).
PLAN_FOLDERS: dict[str, str] = {
    "portrait photos running event and bib numbers": SHARP,
    "defocused object in portrait": "defocused_object_portrait",
    **{name: name for name in PRODUCT_CLASSES},
}
#: Which synthetic kinds make examples of each class (see trainer.synthesis.KIND_LABELS).
SYNTH_KINDS: dict[str, tuple[str, ...]] = {
    "defocused_blurred": ("defocus",),
    "motion_blurred": ("shake", "linear_motion", "subject_motion"),
    "defocused_object_portrait": ("subject_defocus",),
    SHARP: ("bokeh", "panning", "high_iso"),
}
WORK_LONG_SIDE = 1024  # synthesis size; strengths are always stated in pixels at a 2048-px long side
#: Share of the examples of a reframing job list (`Job.reframe`) made from a crop of their photo; the rest
#: keep the whole frame, as the engine sees it.
REFRAME_SHARE = 0.5
#: `subject_defocus` shows a missed focus only where the background stays sharp: defocusing the person of a photo
#: whose background is already soft (a portrait on bokeh) leaves no sharp part, a defocused frame. With the gate on
#: (`--subject-background`), photos whose background has a mean sharpness (`background_sharpness`) below the given
#: value are not used for it; this value is the one measured (models/MODEL_CARD.md, "Subject defocus on a soft
#: background").
SHARP_BACKGROUND_MIN = 0.05
_BACKGROUND_SIDE = 2048  # long side a photo is judged at (the shared race photos' size)
#: The kinds that blur the runner alone: in the held-out splits their examples record how sharp the rest of their
#: frame was (`background_sharpness`), so evaluation can tell a missed runner on a sharp background from a frame with
#: nothing sharp left (models/MODEL_CARD.md, "Subject blur on race photos and on a sharp background").
SUBJECT_KINDS = ("subject_defocus", "subject_motion")
#: The kinds made through a person mask: the subject blurs, and the hard negatives that keep the masked person sharp
#: (bokeh, panning). The same set as trainer.synthesis.MASK_KINDS, here without loading OpenCV (a test keeps them equal).
MASK_KINDS = frozenset({*SUBJECT_KINDS, "bokeh", "panning"})
DATASET_INFO = "dataset.json"
MANIFEST = "manifest.csv"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SourceImage:
    """One labelled original photo."""

    path: Path
    label: str
    group: str


@dataclass(frozen=True)
class Job:
    """One output example to make: an original, possibly synthesised or augmented."""

    split: str
    label: str
    source: SourceImage
    kind: str = "original"  # original | augmented | a synthesis kind
    seed: int = 0
    out_name: str = ""
    min_strength_px: float = 0.0  # synthesis kinds: draw strengths from max(range low end, this) up
    lens_softness_px: float = 0.0  # synthesis kinds: max sigma (px at 2048) of lens_softness; 0 = none
    reframe: float = 0.0  # synthesis kinds: on REFRAME_SHARE of them, crop the photo to >= this share per side; 0 = never
    veil: float = 0.0  # synthesis kinds: share of them seen through a bright veil (synthesis.veil); 0 = never
    sharpen: float = 0.0  # synthesis kinds: share of them given a wide output sharpening; 0 = the mild standard one


@dataclass(frozen=True)
class ManifestRow:
    split: str
    label: str
    file: str
    source: str
    group: str
    kind: str
    strength_px: float = 0.0
    synth_file: str = ""
    params: str = ""
    error: str = ""


@dataclass(frozen=True)
class PrepareOptions:
    spec: InputSpec = field(
        default_factory=lambda: InputSpec(size=224, resize="stretch", reducing_gap=TRAIN_REDUCING_GAP)
    )
    val_fraction: float = 0.2
    seed: int = 0
    balance: bool = True
    synth: Mapping[str, int] = field(default_factory=dict)  # extra synthetic training examples per class
    workers: int = 2
    mask_dir: Path | None = None  # cached person masks (trainer.masks.precompute_masks)
    subject_background: float = 0.0  # min background sharpness of a subject_defocus photo (0: any; see above)


# --------------------------------------------------------------------------- discovery and groups
def discover(source: Path) -> list[SourceImage]:
    """Labelled originals from the plan's folder layout or plain class-named folders (searched recursively)."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {source}")
    found: list[tuple[Path, str]] = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        label = PLAN_FOLDERS.get(folder.name.strip().lower())
        if label is None:
            continue
        # os.walk with followlinks: `run --extra-examples` merges folders through symlinks, which rglob skips
        files = [Path(root) / n for root, _dirs, names in os.walk(folder, followlinks=True) for n in names]
        for f in sorted(files):
            if f.is_file() and is_image_path(f) and not f.name.startswith("."):
                found.append((f, label))
    if not found:
        known = ", ".join(sorted({*PLAN_FOLDERS}))
        raise ValueError(f"no labelled images under {source}; expected subfolders named: {known}")
    groups = infer_groups([p for p, _ in found])
    return [SourceImage(p, label, groups[p]) for p, label in found]


def _exif_time(path: Path) -> datetime | None:
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            raw = exif.get_ifd(0x8769).get(36867) or exif.get(306)  # DateTimeOriginal, else DateTime
    except Exception:
        return None
    try:
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
    except ValueError:
        return None


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def infer_groups(paths: Sequence[Path], burst_gap_s: float = 3.0, number_gap: int = 3) -> dict[Path, str]:
    """Group near-duplicates: frames shot within `burst_gap_s` (EXIF time), else consecutive file numbers.

    Groups are formed per folder-independent camera sequence, so a burst labelled partly sharp and partly
    blurred still lands on one side of the split.
    """
    groups: dict[Path, str] = {}
    timed = sorted(((t, p) for p in paths if (t := _exif_time(p)) is not None), key=lambda tp: (tp[0], str(tp[1])))
    last: datetime | None = None
    gid = 0
    for t, p in timed:
        if last is None or (t - last).total_seconds() > burst_gap_s:
            gid += 1
        groups[p] = f"burst{gid:05d}"
        last = t
    untimed = [p for p in paths if p not in groups]
    keyed: list[tuple[str, int, Path]] = []
    for p in untimed:
        m = _NUMBERED.match(p.stem)
        if m:
            keyed.append((m.group(1), int(m.group(2)), p))
        else:
            groups[p] = f"file:{p.stem}"
    keyed.sort(key=lambda k: (k[0], k[1]))
    prev: tuple[str, int] | None = None
    for prefix, num, p in keyed:
        if prev is None or prev[0] != prefix or num - prev[1] > number_gap:
            gid += 1
        groups[p] = f"seq{gid:05d}"
        prev = (prefix, num)
    return groups


def split_by_group(
    items: Sequence[SourceImage], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[SourceImage], list[SourceImage]]:
    """Deterministic ~80/20 split in which every group lies wholly on one side, per class as far as groups allow."""
    by_group: dict[str, list[SourceImage]] = defaultdict(list)
    for it in items:
        by_group[it.group].append(it)
    names = sorted(by_group)
    random.Random(seed).shuffle(names)
    totals = Counter(it.label for it in items)
    target = {c: val_fraction * n for c, n in totals.items()}
    in_val: Counter[str] = Counter()
    val_groups: set[str] = set()
    for g in names:
        counts = Counter(it.label for it in by_group[g])
        # take the group if the class it mostly adds is still below its validation target
        main = counts.most_common(1)[0][0]
        if in_val[main] + counts[main] / 2 <= target[main] and len(by_group) > 1:
            val_groups.add(g)
            in_val.update(counts)
    train = [it for it in items if it.group not in val_groups]
    val = [it for it in items if it.group in val_groups]
    return train, val


# --------------------------------------------------------------------------- planning
def plan_jobs(
    splits: Mapping[str, Sequence[SourceImage]],
    synth_per_split: Mapping[str, Mapping[str, int]],
    balance_splits: Iterable[str] = ("train",),
    seed: int = 0,
    has_mask: Callable[[SourceImage], bool] | None = None,
    sharp_background: Callable[[SourceImage], bool] | None = None,
) -> list[Job]:
    """Every example to make: originals, synthetic examples from each split's sharp originals, then balancing copies.

    `sharp_background`, if given, picks the photos `subject_defocus` may use among those with a mask."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    balance_splits = set(balance_splits)
    for split, items in splits.items():
        for it in items:
            jobs.append(Job(split, it.label, it, "original", rng.randrange(2**31)))
        sharp = [it for it in items if it.label == SHARP]
        masked = [it for it in sharp if has_mask is None or has_mask(it)]
        pools = {"subject_defocus": subject_defocus_pool(masked, sharp_background)}
        for label, count in sorted(synth_per_split.get(split, {}).items()):
            if count <= 0:
                continue
            kinds = SYNTH_KINDS[label]
            for i in range(count):
                kind = kinds[i % len(kinds)]
                needs_mask = kind in {"subject_motion", "subject_defocus", "bokeh", "panning"}
                pool = pools.get(kind, masked) if needs_mask else sharp
                if not pool:
                    if needs_mask and sharp:  # no masks at all: fall back to a maskless kind of the same class
                        alt = [k for k in kinds if k not in {"subject_motion", "subject_defocus", "bokeh", "panning"}]
                        if not alt:
                            continue
                        kind, pool = alt[i % len(alt)], sharp
                    else:
                        continue
                src = pool[rng.randrange(len(pool))]
                jobs.append(Job(split, label, src, kind, rng.randrange(2**31)))
        if split in balance_splits:
            counts = Counter(j.label for j in jobs if j.split == split)
            top = max(counts.values(), default=0)
            originals: dict[str, list[SourceImage]] = defaultdict(list)
            for it in items:
                originals[it.label].append(it)
            for label, n in sorted(counts.items()):
                pool = originals.get(label, [])
                for i in range(top - n if pool else 0):
                    jobs.append(Job(split, label, pool[i % len(pool)], "augmented", rng.randrange(2**31)))
    named: list[Job] = []
    for k, job in enumerate(jobs):
        named.append(replace(job, out_name=f"{k:06d}_{_slug(job.source.path.stem)}_{job.kind}.png"))
    return named


def subject_defocus_pool(
    masked: Sequence[SourceImage], sharp_background: Callable[[SourceImage], bool] | None
) -> list[SourceImage]:
    """The photos `subject_defocus` may use: those with a mask, and a sharp background where that is asked for."""
    return list(masked) if sharp_background is None else [s for s in masked if sharp_background(s)]


def background_sharpness(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean local sharpness (engine.focus.focus_map, 0-1) of an RGB photo outside its person mask.

    The mask is grown by 4 px of the 1,024-px focus map (0.4% of the long side), so the person's own soft edge does
    not count. Flat areas (sky, a plain wall) count as soft, like bokeh: a background without crisp detail cannot
    show that the person is the part out of focus. A mask that covers the whole frame gives 0.0.
    """
    from engine.focus import focus_map

    focus = focus_map(Image.fromarray(np.asarray(image, dtype=np.uint8)), max_side=1024)
    person = Image.fromarray((np.asarray(mask) >= 0.5).astype(np.uint8) * 255)
    grown = person.resize((focus.shape[1], focus.shape[0])).filter(ImageFilter.MaxFilter(9))
    background = focus[np.asarray(grown) <= 127]
    return float(background.mean()) if background.size else 0.0


def check_subject_background(value: float) -> None:
    """`--subject-background` is a sharpness on the focus map's 0-1 scale (0: off)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--subject-background must be between 0 (off) and 1, got {value}")


def sharp_background_checker(mask_dir: Path | None, minimum: float) -> Callable[[SourceImage], bool]:
    """Whether a photo's background is at least `minimum` sharp (`background_sharpness`), judged once per photo.

    A photo without a mask, or one that cannot be read, does not pass (it is only left out of `subject_defocus`;
    any other kind reports its own error for it).
    """
    from trainer.masks import person_mask

    seen: dict[Path, bool] = {}

    def check(it: SourceImage) -> bool:
        if it.path not in seen:
            try:
                base = _load_working(it.path, _BACKGROUND_SIDE)
                mask = person_mask(base, it.path, mask_dir)
                seen[it.path] = mask is not None and background_sharpness(base, mask) >= minimum
            except (UnreadableImageError, OSError, ValueError, Image.DecompressionBombError):
                seen[it.path] = False
        return seen[it.path]

    return check


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text)[:40].strip("-") or "img"


# --------------------------------------------------------------------------- making one example
def augment_original(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur-preserving copy: flip, mild exposure/contrast/colour change, a crop of at least 90% per side.

    The crop is taken from the full decoded image and only ever downscaled afterwards, so it adds no softness.
    """
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = img.size
    fw, fh = rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.0)
    cw, ch = int(w * fw), int(h * fh)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.85, 1.15)))
    return ImageEnhance.Color(img).enhance(float(rng.uniform(0.8, 1.2)))


def _load_working(path: Path, long_side: int) -> np.ndarray:
    """A photo as RGB at most `long_side` px long, for synthesis (UnreadableImageError for a file that is no image)."""
    from PIL import ImageOps

    try:
        src = Image.open(path)
    except ImportError:  # Image.open as ultralytics patches it, on a file Pillow cannot identify (engine.preprocess)
        raise UnreadableImageError("not an image, or an unsupported format") from None
    with src:
        src.draft("RGB", (long_side, long_side))
        src.load()
        im: Image.Image = (ImageOps.exif_transpose(src) or src).convert("RGB")
    scale = long_side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def make_example(job: Job, out_dir: Path, spec: InputSpec, mask_dir: Path | None) -> ManifestRow:
    """Write one example as a model-ready PNG (and its synthetic JPEG), return its manifest row."""
    rel = Path(job.split) / job.label / job.out_name
    row = ManifestRow(job.split, job.label, str(rel), str(job.source.path), job.source.group, job.kind)
    rng = np.random.default_rng(job.seed)
    try:
        if job.kind == "original":
            img = open_image(job.source.path, spec)
        elif job.kind == "augmented":
            img = augment_original(open_image(job.source.path, replace(spec, draft_factor=4.0)), rng)
        else:
            img, row = _synthesise(job, out_dir, spec, mask_dir, rng, row)
    except (UnreadableImageError, OSError, ValueError) as exc:
        return replace(row, file="", error=str(exc))
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    to_model_image(img, spec).save(dest, format="PNG", compress_level=1)
    return row


def _synthesise(
    job: Job, out_dir: Path, spec: InputSpec, mask_dir: Path | None, rng: np.random.Generator, row: ManifestRow
) -> tuple[Image.Image, ManifestRow]:
    from trainer import synthesis
    from trainer.masks import person_mask

    reframe_now = job.reframe > 0 and rng.random() < REFRAME_SHARE
    # A reframed photo is loaded larger, so that its crop reaches the usual synthesis size where the photo allows.
    base = _load_working(job.source.path, round(WORK_LONG_SIDE / job.reframe) if reframe_now else WORK_LONG_SIDE)
    mask = None
    if job.kind in MASK_KINDS:
        mask = person_mask(base, job.source.path, mask_dir)
        if mask is None:
            raise ValueError(f"no person mask for {job.source.path.name}")
    reframed: dict[str, float] = {}
    if reframe_now:
        full_h, full_w = base.shape[:2]
        x0, y0, x1, y1 = reframe_box((full_h, full_w), rng, job.reframe, mask)
        base, mask = _crop_to_work(base, mask, (x0, y0, x1, y1))
        reframed = {"reframe_x0": round(x0 / full_w, 4), "reframe_y0": round(y0 / full_h, 4),
                    "reframe_x1": round(x1 / full_w, 4), "reframe_y1": round(y1 / full_h, 4)}
    blurred, record = synthesis.synthesize(base, job.kind, rng, mask=mask, min_strength_px=job.min_strength_px)
    if record.label != job.label:
        raise ValueError(f"synthesis kind {job.kind} makes {record.label}, not {job.label}")
    background: dict[str, float] = {}
    if job.kind in SUBJECT_KINDS and job.split != "train" and mask is not None:  # (read by evaluation only)
        background = {"background_sharpness": round(background_sharpness(base, mask), 4)}
    lens: dict[str, float] = {}
    if job.lens_softness_px > 0:  # optics, before the overlays burned in at export
        scale = float(record.params["scale"])
        blurred, lens = synthesis.lens_softness(blurred, rng, job.lens_softness_px, scale)
    veiled: dict[str, float] = {}
    if job.veil > 0 and rng.random() < job.veil:  # haze in the scene, before the overlays burned in at export
        blurred, veiled = synthesis.veil(blurred, rng)
    if rng.random() < 0.4:  # pin-sharp overlays on every class, so an overlay never means "sharp"
        blurred = synthesis.add_overlay(blurred, rng)
    sharpening = synthesis.wide_sharpening(job.sharpen) if job.sharpen > 0 else synthesis.MILD_SHARPENING
    jpeg, finish_params = synthesis.finish(blurred, rng, sharpening)
    synth_rel = Path("synth") / job.split / job.label / (Path(job.out_name).stem + ".jpg")
    synth_path = out_dir / synth_rel
    synth_path.parent.mkdir(parents=True, exist_ok=True)
    synth_path.write_bytes(jpeg)
    img = open_image(synth_path, spec)  # decoded exactly as the engine decodes a user's JPEG
    params = {**record.params, **background, **reframed, **lens, **veiled, **finish_params}
    return img, replace(row, strength_px=round(record.strength_px, 2), synth_file=str(synth_rel), params=json.dumps(params))


def reframe_box(
    shape: tuple[int, int], rng: np.random.Generator, min_side: float, mask: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """A random crop (x0, y0, x1, y1) of an HxW photo: each side at least `min_side` of the frame's, the aspect
    within about 10% of the frame's, and, given a person mask, the whole runner inside (the crop grows to hold it).

    A photographer's export is often a tighter framing of the same frame; a crop taken before any resizing adds
    new compositions without the softness an upscaled crop would add.
    """
    h, w = shape
    if not 0 < min_side <= 1:
        raise ValueError(f"reframe share must be in (0, 1], got {min_side}")
    f = float(rng.uniform(min_side, 1.0))
    fh = float(np.clip(f * rng.uniform(0.9, 1.1), min_side, 1.0))
    cw, ch = max(1, round(w * f)), max(1, round(h * fh))
    bx0, by0, bx1, by1 = w, h, 0, 0  # the runner's box; empty without a mask
    if mask is not None:
        ys, xs = np.nonzero(np.asarray(mask) >= 0.5)
        if ys.size:
            bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            cw, ch = max(cw, bx1 - bx0), max(ch, by1 - by0)
    x_lo, x_hi = max(0, bx1 - cw), min(bx0, w - cw)
    y_lo, y_hi = max(0, by1 - ch), min(by0, h - ch)
    x0 = int(rng.integers(x_lo, x_hi + 1))
    y0 = int(rng.integers(y_lo, y_hi + 1))
    return x0, y0, x0 + cw, y0 + ch


def _crop_to_work(
    base: np.ndarray, mask: np.ndarray | None, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop image and mask to `box`, then bring the crop down to the synthesis size if it is larger."""
    x0, y0, x1, y1 = box
    crop = base[y0:y1, x0:x1]
    m = None if mask is None else np.asarray(mask)[y0:y1, x0:x1]
    scale = WORK_LONG_SIDE / max(crop.shape[:2])
    if scale < 1:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
        if m is not None:
            m = np.asarray(Image.fromarray(m.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    return np.ascontiguousarray(crop), m


def _make_example_star(args: tuple[Job, Path, InputSpec, Path | None]) -> ManifestRow:
    return make_example(*args)


# --------------------------------------------------------------------------- writing
def write_dataset(
    out_dir: Path,
    jobs: Sequence[Job],
    spec: InputSpec,
    workers: int = 2,
    mask_dir: Path | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> list[ManifestRow]:
    """Make every job (in parallel processes), write the manifest and dataset.json, return the rows.

    Setting `stop` cancels the jobs not yet started and raises InterruptedError; no manifest is written, so the
    half-made folder is never taken for a dataset (a resume makes it again)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    args = [(j, out_dir, spec, mask_dir) for j in jobs]
    step = max(1, len(jobs) // 20)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        made = pool.map(_make_example_star, args, chunksize=4) if pool else map(_make_example_star, args)
        for i, row in enumerate(made, 1):
            rows.append(row)
            if progress and (i % step == 0 or i == len(jobs)):
                progress(f"prepared {i}/{len(jobs)} images")
            if stop is not None and stop.is_set():
                raise InterruptedError(f"dataset preparation cancelled after {i} of {len(jobs)} images")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)  # (waits only for the chunks already running)
    with open(out_dir / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ManifestRow.__dataclass_fields__))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    info = {"imgsz": spec.size, "resize": spec.resize, "draft_factor": spec.draft_factor,
            "reducing_gap": spec.reducing_gap, "classes": sorted(PRODUCT_CLASSES)}
    (out_dir / DATASET_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    for split in {r.split for r in rows}:
        for c in PRODUCT_CLASSES:  # ultralytics needs every class folder in every split
            (out_dir / split / c).mkdir(parents=True, exist_ok=True)
    return rows


def read_manifest(dataset_dir: Path) -> list[ManifestRow]:
    with open(Path(dataset_dir) / MANIFEST, newline="", encoding="utf-8") as fh:
        return [
            ManifestRow(r["split"], r["label"], r["file"], r["source"], r["group"], r["kind"],
                        float(r["strength_px"] or 0), r["synth_file"], r["params"], r["error"])
            for r in csv.DictReader(fh)
        ]


def read_dataset_spec(dataset_dir: Path) -> InputSpec:
    info = json.loads((Path(dataset_dir) / DATASET_INFO).read_text(encoding="utf-8"))
    gap = info.get("reducing_gap")
    return InputSpec(size=int(info["imgsz"]), resize=info["resize"], draft_factor=float(info.get("draft_factor", 2.0)),
                     reducing_gap=None if gap is None else float(gap))


def count_table(rows: Sequence[ManifestRow]) -> str:
    """Counts per class and split (originals, synthetic, augmented, failed) as a text table."""
    splits = sorted({r.split for r in rows}, key=lambda s: ("train", "val", "test").index(s) if s in ("train", "val", "test") else 9)
    lines = [f"{'class':<27}" + "".join(f"{s:>28}" for s in splits)]
    lines.append(" " * 27 + "".join(f"{'total (orig/synth/aug/fail)':>28}" for _ in splits))
    for c in sorted(PRODUCT_CLASSES):
        cells = []
        for s in splits:
            rs = [r for r in rows if r.split == s and r.label == c]
            ok = [r for r in rs if not r.error]
            orig = sum(r.kind == "original" for r in ok)
            aug = sum(r.kind == "augmented" for r in ok)
            cells.append(f"{len(ok):>8} ({orig}/{len(ok) - orig - aug}/{aug}/{len(rs) - len(ok)})")
        lines.append(f"{c:<27}" + "".join(f"{cell:>28}" for cell in cells))
    return "\n".join(lines)


def prepare(
    source: Path,
    out_dir: Path,
    options: PrepareOptions | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> list[ManifestRow]:
    """`blurflag-train prepare`: split by group, then synthesise and balance, then write the dataset."""
    options = options or PrepareOptions()
    check_subject_background(options.subject_background)
    items = discover(source)
    train, val = split_by_group(items, options.val_fraction, options.seed)
    ratio = options.val_fraction / max(1e-6, 1 - options.val_fraction)
    synth = {
        "train": dict(options.synth),
        "val": {c: int(round(n * ratio)) for c, n in options.synth.items()},
    }
    has_mask = _mask_checker(options.mask_dir) if any(options.synth.values()) else None
    sharp_background = (sharp_background_checker(options.mask_dir, options.subject_background)
                        if options.subject_background > 0 and options.synth.get("defocused_object_portrait") else None)
    jobs = plan_jobs({"train": train, "val": val}, synth, ("train",) if options.balance else (), options.seed, has_mask,
                     sharp_background)
    return write_dataset(out_dir, jobs, options.spec, options.workers, options.mask_dir, progress, stop)


def _mask_checker(mask_dir: Path | None) -> Callable[[SourceImage], bool]:
    from trainer import masks

    can_segment = masks.segmentation_available()

    def check(it: SourceImage) -> bool:
        if mask_dir is not None and masks.cached_mask_path(it.path, mask_dir).is_file():
            return True
        return masks.load_shared_mask(it.path) is not None or can_segment

    return check

