"""`blurflag-train pretrain`: a clean pretrained start, made here, from dead-leaves pictures.

A dead-leaves corpus (`trainer.deadleaves`) goes through the shipped recipe's synthesis and finishing (every kind,
sharp hard negatives included, training blur only at visible strengths), and YOLOv8n-cls learns the four classes
on it from scratch. Every source picture is new, so the network cannot memorise photos and has to learn what
blur looks like; its weights (the head too: the classes are the product's four) then start `shipped` with
`--weights`. Nothing here is a photo of anyone or anything downloaded.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.model import SHARP
from engine.preprocess import InputSpec
from trainer.dataset import MANIFEST, ManifestRow, Progress, SourceImage, write_dataset

#: The finished run's weights in the work folder (best epoch by validation top-1).
PRETRAINED = "pretrained.pt"


def build_pretrain_dataset(
    corpus: Path,
    out_dir: Path,
    spec: InputSpec,
    val_pictures: int,
    scale: float,
    val_scale: float = 1.0,
    seed: int = 0,
    workers: int = 2,
    train_floor: Mapping[str, float] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> list[ManifestRow]:
    """The shipped mix (times `scale`) made from a dead-leaves corpus: the first `val_pictures` pictures are the
    validation split (a quarter of the mix times `val_scale`, plus each picture once, sharp), the rest the training
    split, so no picture is in both."""
    from trainer.deadleaves import corpus_items
    from trainer.shipped import plan_shipped_jobs

    items = corpus_items(corpus)
    if len(items) <= val_pictures:
        raise ValueError(f"{corpus}: {len(items)} pictures, need more than the {val_pictures} held for validation")
    sources = [SourceImage(it.image, SHARP, f"deadleaves:{it.image.stem}") for it in items]
    train = plan_shipped_jobs({"train": sources[val_pictures:]}, lambda _s: True, seed, scale, None, train_floor)
    val = plan_shipped_jobs({"val": sources[:val_pictures]}, lambda _s: True, seed + 1, val_scale)
    if progress:
        progress(f"pretraining dataset: {len(train)} training and {len(val)} validation examples from "
                 f"{len(items)} dead-leaves pictures")
    return write_dataset(out_dir, train + val, spec, workers, None, progress, stop)


def pretrain(args: Any, rep: Any, stop: threading.Event) -> int:
    """Corpus -> dataset -> YOLOv8n-cls from scratch; each step is skipped (or resumed) once done."""
    from trainer.card import VISIBLE_PX
    from trainer.dataset import count_table, read_manifest
    from trainer.deadleaves import write_corpus
    from trainer.train import EpochStats, TrainConfig, train_model

    t0 = time.monotonic()
    work = Path(args.work).resolve()
    dataset = work / "dataset"
    out = work / PRETRAINED
    if args.pictures <= args.val_pictures:
        raise ValueError(f"--pictures ({args.pictures}) must exceed --val-pictures ({args.val_pictures})")
    if not 0.0 <= args.texture <= 1.0:
        raise ValueError(f"--texture must be between 0 and 1, got {args.texture}")
    weights = Path(args.weights).resolve() if args.weights else None
    if weights is not None and not weights.is_file():
        raise ValueError(f"--weights: no such file: {weights}")
    if out.is_file():
        rep.log(f"already trained: {out}")
        return 0
    rep.emit("step", step="render", index=1, total=3)
    write_corpus(work / "corpus", args.pictures, args.seed, args.workers, rep.log, stop, args.texture)
    rep.log(f"corpus ready after {time.monotonic() - t0:.0f} s")
    if stop.is_set():
        return 130
    if (dataset / MANIFEST).is_file():  # written last: a finished dataset
        rows = read_manifest(dataset)
        rep.log("reusing the prepared dataset")
    else:
        rep.emit("step", step="prepare", index=2, total=3)
        spec = InputSpec(size=args.imgsz, resize="stretch", reducing_gap=args.reducing_gap)
        rows = build_pretrain_dataset(work / "corpus", dataset, spec, args.val_pictures, args.scale, args.val_scale,
                                      args.seed, args.workers, VISIBLE_PX, rep.log, stop)
    rep.log(count_table(rows))
    rep.log(f"dataset ready after {time.monotonic() - t0:.0f} s")
    if stop.is_set():
        return 130

    def on_epoch(s: EpochStats) -> None:
        rep.emit("epoch", epoch=s.epoch, epochs=s.epochs, loss=s.loss, top1=s.top1, val_loss=s.val_loss)

    rep.emit("step", step="train", index=3, total=3)
    kw: dict[str, Any] = {"epochs": args.epochs, "time_hours": args.hours or None, "patience": args.epochs}
    kw["precision"] = getattr(args, "precision", "auto")
    if args.threads:
        kw["threads"] = args.threads
    if weights is not None:
        kw["warmup_bias_lr"] = 0.0  # continuing a trained network, as `shipped --weights` does
    best = train_model(dataset, work, TrainConfig(**kw), weights, True, on_epoch, rep.log, stop)
    if stop.is_set():
        return 130
    shutil.copyfile(best, out.with_suffix(".tmp"))
    out.with_suffix(".tmp").replace(out)
    rep.log(f"pretrained weights: {out} (start `blurflag-train shipped --weights` from them); "
            f"total wall time {time.monotonic() - t0:.0f} s")
    return 0
