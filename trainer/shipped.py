"""Rebuild the bundled model's dataset from `../shared/data` (see models/MODEL_CARD.md for the recipe).

Split by the `group` column of index.csv: whole races are held out for the test split, so no burst or
race straddles training and testing. The three real triplets are never used here; they are checked by
`evaluate` on their own. Every example, the sharp ones included, is made by the same chain: load at the
synthesis size, (blur,) maybe a pin-sharp overlay, sensor noise, JPEG, then the engine's decoding.
"""

from __future__ import annotations

import csv
import random
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.model import SHARP
from engine.preprocess import InputSpec, parse_reducing_gap
from trainer.card import VISIBLE_PX
from trainer.dataset import (
    MASK_KINDS,
    Job,
    ManifestRow,
    Progress,
    SourceImage,
    _slug,
    check_subject_background,
    sharp_background_checker,
    subject_defocus_pool,
    write_dataset,
)
from trainer.evaluate import Sample, audit_verdict, load_subject_audit

#: Whole races held out of training and model selection (test), and races used for model selection (val).
TEST_GROUPS = frozenset(
    {"race05/runnerbar", "race08/runnerbar", "race10/runnerbar", "race_allardhoeve", "cuhk_samples_xinario"}
)
VAL_GROUPS = frozenset({"race03/pailixiang", "race04/runnerbar"})
MIN_LONG_SIDE = 400  # smaller person photos would carry too little detail to blur meaningfully

#: Examples per class in the training split, by kind (validation gets a quarter, test a fixed count).
TRAIN_MIX: dict[str, dict[str, int]] = {
    SHARP: {"clean": 400, "bokeh": 70, "panning": 70, "high_iso": 60},
    "defocused_blurred": {"defocus": 600},
    "motion_blurred": {"shake": 240, "linear_motion": 200, "subject_motion": 160},
    "defocused_object_portrait": {"subject_defocus": 600},
}
TEST_PER_KIND = 30


@dataclass(frozen=True)
class ShippedPlan:
    splits: dict[str, list[SourceImage]]
    mix: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


def read_index(shared_dir: Path) -> list[tuple[SourceImage, str, int]]:
    """(source, set, long side) for every usable sharp photo in index.csv."""
    out = []
    with open(Path(shared_dir) / "index.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["set"] in ("kwentar_triplets",):
                continue  # the real triplets are for checking, never for training or selection
            long_side = max(int(r["width"] or 0), int(r["height"] or 0))
            if long_side < MIN_LONG_SIDE:
                continue
            group = r["group"]
            if r["set"] == "person_masks":
                group = f"person:{Path(r['file']).stem}"  # independent web photos, not bursts
            out.append((SourceImage(Path(shared_dir) / r["file"], SHARP, group), r["set"], long_side))
    return out


def split_sources(shared_dir: Path, seed: int = 0) -> dict[str, list[SourceImage]]:
    """train / val / test lists of sharp originals, split by group."""
    rows = read_index(shared_dir)
    splits: dict[str, list[SourceImage]] = {"train": [], "val": [], "test": []}
    rng = random.Random(seed)
    other_groups = sorted({s.group for s, _, _ in rows if s.group not in TEST_GROUPS | VAL_GROUPS})
    rng.shuffle(other_groups)
    # Non-race groups (Kwentar scenes, person photos, bokeh samples): 70 / 15 / 15 by group.
    non_race = [g for g in other_groups if not g.startswith(("race", "bibnumber"))]
    n = len(non_race)
    test_other = set(non_race[: int(0.15 * n)])
    val_other = set(non_race[int(0.15 * n) : int(0.30 * n)])
    for s, _set, _ in rows:
        if s.group in TEST_GROUPS or s.group in test_other:
            splits["test"].append(s)
        elif s.group in VAL_GROUPS or s.group in val_other:
            splits["val"].append(s)
        else:
            splits["train"].append(s)
    return splits


def parse_mix(items: list[str], base: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, dict[str, int]]:
    """TRAIN_MIX (or `base`) with `KIND=N` overrides; an unknown kind or a bad count raises ValueError."""
    mix = {label: dict(kinds) for label, kinds in (base or TRAIN_MIX).items()}
    for item in items:
        kind, sep, count = item.partition("=")
        owner = [label for label, kinds in mix.items() if kind in kinds]
        if not sep or not owner:
            known = ", ".join(k for kinds in mix.values() for k in kinds)
            raise ValueError(f"--mix wants KIND=N with KIND one of {known}; got {item!r}")
        try:
            n = int(count)
        except ValueError:
            raise ValueError(f"--mix {item!r}: N must be a whole number") from None
        if n < 0:
            raise ValueError(f"--mix {item!r}: N must be >= 0")
        mix[owner[0]][kind] = n
    return mix


def parse_gap(text: str | None) -> float | None:
    """`--reducing-gap`: a number >= 1, or "none" (plain Lanczos over the whole decoded image)."""
    try:
        return parse_reducing_gap(text)
    except ValueError as exc:
        raise ValueError(f"--reducing-gap: {exc}") from None


def plan_shipped_jobs(
    splits: Mapping[str, list[SourceImage]],
    has_mask: Callable[[SourceImage], bool],
    seed: int = 0,
    scale: float = 1.0,
    mix: Mapping[str, Mapping[str, int]] | None = None,
    train_floor: Mapping[str, float] | None = None,
    lens_softness_px: float = 0.0,
    reframe: float = 0.0,
    sharp_background: Callable[[SourceImage], bool] | None = None,
    veil: float = 0.0,
    sharpen: float = 0.0,
    mask_ok: Callable[[SourceImage], bool] | None = None,
) -> list[Job]:
    """Jobs for every split: train per `mix` (default TRAIN_MIX) times `scale`, val a quarter of it, test
    TEST_PER_KIND per kind. `train_floor` (kind -> px at 2048) keeps training blur at or above a strength;
    val and test keep the full range, so recall below it is still measured. `lens_softness_px` (max sigma at
    2048 px, see synthesis.lens_softness) applies to every job of every split alike. `reframe` (see
    `Job.reframe`) applies to training jobs only, so validation and test keep the whole frames the engine sees;
    so do `veil` and `sharpen` (see `Job.veil`, `Job.sharpen`), so that the held-out splits stay the ones earlier
    models were measured on.
    `sharp_background`, if given, picks the photos `subject_defocus` may use in every split
    (trainer.dataset.SHARP_BACKGROUND_MIN). `mask_ok`, if given, picks the photos the mask kinds' training examples
    may use (`audited_mask_check`): the examples go to the allowed photos of the same shuffled order in turn, so the
    random draws, and with them every validation and test job, stay those of the plan without it."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for split, items in splits.items():
        masked = [s for s in items if has_mask(s)]
        pools = {"subject_defocus": subject_defocus_pool(masked, sharp_background)}
        for label, kinds in (mix or TRAIN_MIX).items():
            for kind, count in kinds.items():
                if split == "train":
                    n = int(round(count * scale))
                elif split == "val":
                    n = int(round(count * scale / 4))
                else:
                    n = len(items) if kind == "clean" else TEST_PER_KIND
                pool = pools.get(kind, masked) if kind in MASK_KINDS else items
                if not pool:
                    continue
                if kind == "clean" and split != "train":
                    picks = list(pool)  # every held-out sharp photo once
                else:
                    order = list(pool)
                    rng.shuffle(order)
                    if mask_ok is not None and split == "train" and kind in MASK_KINDS:
                        order = [s for s in order if mask_ok(s)] or order   # (none allowed: the plan without it)
                    picks = [order[i % len(order)] for i in range(n)]
                floor = (train_floor or {}).get(kind, 0.0) if split == "train" else 0.0
                for src in picks:
                    jobs.append(Job(split, label, src, kind, rng.randrange(2**31), min_strength_px=floor,
                                    lens_softness_px=lens_softness_px, reframe=reframe if split == "train" else 0.0,
                                    veil=veil if split == "train" else 0.0,
                                    sharpen=sharpen if split == "train" else 0.0))
    return [replace(j, out_name=f"{k:06d}_{_slug(j.source.path.stem)}_{j.kind}.png") for k, j in enumerate(jobs)]


def audited_mask_check(audit: Mapping[str, str] | None = None) -> Callable[[SourceImage], bool]:
    """Whether a photo's mask may make training examples of the mask kinds: not where the audit of the masks
    (trainer/subject_audit.csv, `trainer.evaluate.load_subject_audit`) finds someone other than the photo's main subject
    masked (`not_main`) or no single subject (`unclear`): a subject blur of someone else leaves a sharp-looking photo
    labelled blurred, a bokeh or a panning of someone else a blurred subject labelled sharp. Photos the audit does not
    hold (e.g. the person photos of the training split) are allowed."""
    verdicts = load_subject_audit() if audit is None else dict(audit)
    seen: dict[Path, bool] = {}

    def check(s: SourceImage) -> bool:
        if s.path not in seen:
            seen[s.path] = audit_verdict(str(s.path), verdicts) in (None, "main")
        return seen[s.path]

    return check


def build_shipped_dataset(
    shared_dir: Path,
    out_dir: Path,
    spec: InputSpec,
    mask_dir: Path | None = None,
    seed: int = 0,
    scale: float = 1.0,
    workers: int = 2,
    progress: Progress | None = None,
    synth_seed: int = 0,
    mix: Mapping[str, Mapping[str, int]] | None = None,
    train_floor: Mapping[str, float] | None = None,
    lens_softness_px: float = 0.0,
    reframe: float = 0.0,
    stop: threading.Event | None = None,
    subject_background: float = 0.0,
    veil: float = 0.0,
    sharpen: float = 0.0,
    held_out_only: bool = False,
    audited_masks: bool = False,
) -> list[ManifestRow]:
    """Write the shipped model's train/val/test dataset into `out_dir` (a work folder).

    `seed` fixes the split by group; `synth_seed` only which photo gets which blur, and how. `subject_background`
    above 0 keeps `subject_defocus` to photos whose background is at least that sharp (trainer.dataset).
    `held_out_only` makes only the validation and test examples, the very ones the whole draw has (same jobs,
    seeds and file names): a fresh evaluation draw at a quarter of the work. `audited_masks` makes the mask kinds'
    training examples only from photos whose mask the audit finds on the main subject (`audited_mask_check`; the
    validation and test examples stay the same)."""
    from trainer import masks

    splits = split_sources(shared_dir, seed)

    def has_mask(s: SourceImage) -> bool:
        if mask_dir is not None and masks.cached_mask_path(s.path, mask_dir).is_file():
            return True
        return masks.load_shared_mask(s.path) is not None

    sharp_background = sharp_background_checker(mask_dir, subject_background) if subject_background > 0 else None
    mask_ok = audited_mask_check() if audited_masks else None
    if mask_ok is not None and progress:
        masked = [s for s in splits["train"] if has_mask(s)]
        progress(f"audited masks: {sum(not mask_ok(s) for s in masked)} of the {len(masked)} training photos with a "
                 "mask make no examples of the mask kinds (trainer/subject_audit.csv)")
    jobs = plan_shipped_jobs(splits, has_mask, synth_seed, scale, mix, train_floor, lens_softness_px, reframe,
                             sharp_background, veil, sharpen, mask_ok)
    if held_out_only:
        held = [j for j in jobs if j.split != "train"]
        if progress:
            progress(f"held out only: the {len(held)} validation and test images of the draw's {len(jobs)}")
        jobs = held
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for j in jobs:
        counts[(j.split, j.kind)] += 1
    if progress:
        for split in ("train", "val", "test"):
            progress(f"{split}: {len(splits[split])} sharp originals; jobs " +
                     ", ".join(f"{k}={n}" for (s, k), n in sorted(counts.items()) if s == split))
    return write_dataset(out_dir, jobs, spec, workers, mask_dir, progress, stop)


TRIPLET_LABELS = {"S": SHARP, "F": "defocused_blurred", "M": "motion_blurred"}


def triplet_samples(shared_dir: Path) -> list[Sample]:
    """The nine real photos of the three Kwentar triplets, labelled by their name suffix."""
    out = []
    for p in sorted((Path(shared_dir) / "kwentar" / "real_triplets").glob("*.jpg")):
        out.append(Sample(p, TRIPLET_LABELS[p.stem.rsplit("_", 1)[1]], "real_triplet"))
    return out


def rebuild_shipped_model(args: Any, rep: Any, stop: threading.Event) -> int:
    """`blurflag-train shipped`: dataset from shared data, train (time-boxed, resumable), export, evaluate."""
    from trainer.dataset import count_table, read_dataset_spec, read_manifest
    from trainer.evaluate import evaluate, evaluate_samples, format_report, write_report
    from trainer.export import export_onnx
    from trainer.train import EpochStats, TrainConfig, train_model

    t0 = time.monotonic()
    work = Path(args.work).resolve()
    dataset = work / "dataset"
    # Options are checked before anything is written or deleted.
    weights = getattr(args, "weights", None)
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    if (getattr(args, "dense_weight", None) or 0.0) < 0:
        raise ValueError(f"--dense-weight must be >= 0, got {args.dense_weight}")
    reframe = getattr(args, "reframe", 0.0) or 0.0
    if not 0 <= reframe <= 1:  # the bounds of trainer.dataset.reframe_box, plus 0 for off
        raise ValueError(f"--reframe must be a share of each side in (0, 1] (0: off), got {reframe}")
    check_subject_background(getattr(args, "subject_background", 0.0) or 0.0)
    veil = getattr(args, "veil", 0.0) or 0.0
    if not 0 <= veil <= 1:
        raise ValueError(f"--veil must be a share between 0 (off) and 1, got {veil}")
    sharpen = getattr(args, "sharpen", 0.0) or 0.0
    if not 0 <= sharpen <= 1:
        raise ValueError(f"--sharpen must be a share between 0 (off) and 1, got {sharpen}")
    held_out_only = bool(getattr(args, "held_out_only", False))
    if held_out_only and not getattr(args, "prepare_only", False):
        raise ValueError("--held-out-only makes no training images: use it with --prepare-only")
    spec = InputSpec(size=args.imgsz, resize="stretch", reducing_gap=parse_gap(getattr(args, "reducing_gap", None)))
    mix = parse_mix(getattr(args, "mix", []) or [])
    train_floor = VISIBLE_PX if getattr(args, "train_floor", "none") == "visible" else None
    if args.resume and (dataset / "manifest.csv").exists():
        rows = read_manifest(dataset)
        spec = read_dataset_spec(dataset)  # what the dataset was made with, whatever the options say now
        rep.log("reusing the prepared dataset")
    else:
        if dataset.exists():
            shutil.rmtree(dataset)
        rep.emit("step", step="prepare", index=1, total=4)
        rows = build_shipped_dataset(args.shared, dataset, spec, args.mask_dir, 0, args.scale, args.workers, rep.log,
                                     getattr(args, "synth_seed", 0), mix, train_floor,
                                     getattr(args, "lens_softness", 0.0) or 0.0, reframe, stop,
                                     getattr(args, "subject_background", 0.0) or 0.0, veil, sharpen,
                                     held_out_only, bool(getattr(args, "audited_masks", False)))
    rep.log(count_table(rows))
    failed = [r for r in rows if r.error]
    if failed:
        rep.log(f"{len(failed)} examples failed, e.g. {failed[0].source}: {failed[0].error}")
    rep.log(f"dataset ready after {time.monotonic() - t0:.0f} s")
    if stop.is_set():
        return 130
    if getattr(args, "prepare_only", False):
        return 0
    if not any(r.split == "train" and not r.error for r in rows):
        raise ValueError(f"{dataset} has no training images (made with --held-out-only?): prepare it again")
    patience = getattr(args, "patience", None)
    kw: dict[str, Any] = {"epochs": args.epochs, "time_hours": args.hours,
                          "patience": max(10, args.epochs // 3) if patience is None else patience}
    kw["precision"] = getattr(args, "precision", "auto")
    kw["seed"] = getattr(args, "train_seed", 0)
    if args.threads:
        kw["threads"] = args.threads
    if getattr(args, "lr0", None):
        kw["lr0"] = args.lr0
    if weights is not None:
        kw["warmup_bias_lr"] = 0.0
    if getattr(args, "crop_scale", None) is not None:
        kw["scale"] = args.crop_scale

    def on_epoch(s: EpochStats) -> None:
        rep.emit("epoch", epoch=s.epoch, epochs=s.epochs, loss=s.loss, top1=s.top1, val_loss=s.val_loss)

    rep.emit("step", step="train", index=2, total=4)
    dense_weight = getattr(args, "dense_weight", None)
    if dense_weight is not None:  # the region-supervised loop (trainer/dense.py), same recipe otherwise
        from trainer.dense import DenseConfig, train_dense

        dkw: dict[str, Any] = {"epochs": args.epochs, "time_hours": args.hours or None, "dense_weight": dense_weight,
                               "patience": kw["patience"]}
        for key in ("threads", "lr0", "precision", "seed"):
            if key in kw:
                dkw[key] = kw[key]
        if weights is not None:
            dkw["warmup_bias_lr"] = 0.0
        if "scale" in kw:
            dkw["crop_scale"] = kw["scale"]
        best = train_dense(dataset, work, DenseConfig(**dkw), args.mask_dir, weights, args.resume, on_epoch,
                           rep.log, stop)
    else:
        best = train_model(dataset, work, TrainConfig(**kw), weights, args.resume, on_epoch, rep.log, stop)
    rep.log(f"trained after {time.monotonic() - t0:.0f} s")
    rep.emit("step", step="export", index=3, total=4)
    val_images = [dataset / r.synth_file for r in rows if r.split == "val" and r.synth_file and not r.error]
    report = export_onnx(best, args.model_out, spec, val_images[:: max(1, len(val_images) // 16)][:16])
    rep.log(f"exported {report.model_dir}; parity max |dp| = {report.max_abs_diff:.2e} on {report.images_checked} images")
    rep.emit("step", step="evaluate", index=4, total=4)
    for split in ("val", "test"):
        ev = evaluate(args.model_out, dataset, split)
        write_report(ev, work / f"evaluation_{split}.json")
        rep.log(f"\n=== {split} split ===\n{format_report(ev)}")
    ev = evaluate_samples(args.model_out, triplet_samples(args.shared))
    write_report(ev, work / "evaluation_triplets.json")
    rep.log(f"\n=== real triplets (never trained on) ===\n{format_report(ev)}")
    for p in ev.predictions:
        rep.log(f"  {Path(p['path']).name}: {p['top_class']} (label {p['label']})")
    rep.log(f"total wall time {time.monotonic() - t0:.0f} s")
    return 0
