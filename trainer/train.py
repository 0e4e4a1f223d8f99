"""Fine-tune YOLOv8n-cls on a prepared dataset, offline, on the CPU, with progress and cancel."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.dataset import read_dataset_spec
from trainer.env import configure_offline, disable_sync


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    epochs: int
    loss: float | None
    top1: float | None
    val_loss: float | None


@dataclass(frozen=True)
class TrainConfig:
    """The original plan's hyperparameters, with blur-destroying augmentations turned off or tamed."""

    epochs: int = 100
    patience: int = 20
    batch: int = 16
    dropout: float = 0.3
    weight_decay: float = 0.001
    label_smoothing: float = 0.1  # only where the installed ultralytics still accepts it (removed in 8.4)
    lr0: float = 0.001
    lrf: float = 0.01
    cos_lr: bool = True
    warmup_epochs: float = 3.0  # ultralytics' default
    # ultralytics starts biases at 0.1 and lowers them to lr0 during warm-up; fine-tuning a trained model
    # should start them at 0 like every other weight (the default suits a network trained from scratch).
    warmup_bias_lr: float = 0.1
    hsv_h: float = 0.015
    hsv_s: float = 0.4
    hsv_v: float = 0.3
    degrees: float = 5.0  # plan value; ultralytics' classification pipeline does not rotate
    translate: float = 0.1  # plan value; likewise unused by classification training
    # RandomResizedCrop area is (1 - scale, 1); the crop is scaled back up with bilinear interpolation. The
    # default 0.5 crops half the frame and upscales it, which softens sharp photos into false blur. Even this
    # 10% crop softens every training image (all classes alike) about as much as a 4-8 px defocus at 2048 px
    # (bench/augment_softening.py); turning it off (0), with or without --lens-softness instead, found more
    # faint blur but flagged 4-6x more sharp photos (MODEL_CARD.md), so it stays.
    scale: float = 0.1
    fliplr: float = 0.5  # a mirrored photo has the same blur
    flipud: float = 0.0  # upside-down race photos do not occur
    # RandAugment includes sharpness and blur operations that change the very label we predict.
    auto_augment: str | None = None
    # Random erasing paints flat rectangles; on small sharp runners it can erase the only sharp evidence.
    erasing: float = 0.0
    threads: int = max(1, os.cpu_count() or 1)
    workers: int = 1  # dataloader processes; decoding 224-px PNGs is cheap
    seed: int = 0
    time_hours: float | None = None  # a wall-time budget: ultralytics then fits the epochs (and cosine LR) to it
    # "auto": bfloat16 autocast for the training forward pass where the CPU computes bfloat16 natively (AMX or
    # AVX512-BF16: recent Xeons), float32 elsewhere; "bf16" / "fp32" force one. Weights, optimiser state,
    # validation and the exported ONNX stay float32 either way.
    precision: str = "auto"
    # Decoded training and validation images are kept in RAM (ultralytics' cache="ram") when they fit in this many
    # bytes: decoding a 224-px PNG is a quarter of the data loader's work per example, every epoch.
    cache_ram_bytes: int = 2 << 30
    # channels-last tensors suit oneDNN's convolutions on the CPU (same arithmetic, a different memory layout)
    channels_last: bool = True


PRECISIONS = ("auto", "bf16", "fp32")

ProgressFn = Callable[[EpochStats], None]
LogFn = Callable[[str], None]


def _scalar(value: Any) -> float | None:
    """A loss as one float: ultralytics keeps it as a tensor, or in 8.4 as a dict of named tensors."""
    if value is None:
        return None
    if isinstance(value, dict):
        parts = [_scalar(v) for v in value.values()]
        return float(sum(p for p in parts if p is not None)) if parts else None
    try:
        return float(value.sum()) if hasattr(value, "sum") else float(value)
    except (TypeError, ValueError):
        return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16); elsewhere it is emulated, slower."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)())
               for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def use_bf16(precision: str) -> bool:
    """Resolve a `TrainConfig.precision` for this CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())


@contextmanager
def cpu_bf16_autocast() -> Iterator[None]:
    """Let ultralytics' `amp="bf16"` run on the CPU while training.

    ultralytics 8.4 wraps each training forward pass in its `autocast(torch.bfloat16, device)`, which refuses any
    device but CUDA; with `amp="bf16"` its gradient scaler is off and validation stays float32. This swaps in
    torch's CPU autocast for the duration of one `train()` call.
    """
    import torch
    import ultralytics.engine.trainer as ul_trainer

    original = ul_trainer.autocast

    def autocast(enabled: Any, device: str = "cuda") -> Any:
        if device == "cpu" and enabled is torch.bfloat16:
            return torch.amp.autocast("cpu", dtype=torch.bfloat16)
        return original(enabled, device=device)

    ul_trainer.autocast = autocast
    try:
        yield
    finally:
        ul_trainer.autocast = original


def _decoded_bytes(data: Path, imgsz: int) -> int:
    """What caching a prepared dataset's train and val images in RAM takes (8-bit RGB at the model's input size)."""
    count = sum(1 for split in ("train", "val") if (data / split).is_dir()
                for p in (data / split).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return count * imgsz * imgsz * 3


def _train_args(cfg: TrainConfig, data: Path, imgsz: int, project: Path, name: str) -> dict[str, Any]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    args: dict[str, Any] = dict(
        data=str(data), imgsz=imgsz, epochs=cfg.epochs, patience=cfg.patience, batch=cfg.batch,
        dropout=cfg.dropout, weight_decay=cfg.weight_decay, lr0=cfg.lr0, lrf=cfg.lrf, cos_lr=cfg.cos_lr,
        warmup_epochs=cfg.warmup_epochs, warmup_bias_lr=cfg.warmup_bias_lr,
        optimizer="AdamW",  # "auto" would ignore lr0
        hsv_h=cfg.hsv_h, hsv_s=cfg.hsv_s, hsv_v=cfg.hsv_v, degrees=cfg.degrees, translate=cfg.translate,
        scale=cfg.scale, fliplr=cfg.fliplr, flipud=cfg.flipud, auto_augment=cfg.auto_augment, erasing=cfg.erasing,
        device="cpu", workers=cfg.workers, seed=cfg.seed, deterministic=False,
        amp="bf16" if use_bf16(cfg.precision) else False,
        plots=False,  # plotting loads Arial.ttf from the web
        project=str(project), name=name, exist_ok=True, verbose=False, val=True,
    )
    if _decoded_bytes(data, imgsz) <= cfg.cache_ram_bytes:
        args["cache"] = "ram"
    if cfg.time_hours:
        args["time"] = cfg.time_hours
    if "label_smoothing" in DEFAULT_CFG_DICT:
        args["label_smoothing"] = cfg.label_smoothing
    return args


def train_model(
    dataset_dir: Path,
    work_dir: Path,
    config: TrainConfig | None = None,
    weights: Path | None = None,
    resume: bool = False,
    on_epoch: ProgressFn | None = None,
    log: LogFn | None = None,
    stop_event: threading.Event | None = None,
) -> Path:
    """Train and return the path of `best.pt`.

    Args:
        dataset_dir: a folder written by `prepare` (train/ and val/ ImageFolders plus dataset.json).
        work_dir: where runs, checkpoints and ultralytics' settings go (never the user's folders).
        weights: a local YOLOv8n-cls `.pt` to fine-tune, or a YOLOv8n detector `.pt` or ONNX export (the bundled
            model too) to start from its backbone; None trains from `yolov8n-cls.yaml` (no downloads offline).
        resume: continue from `work_dir/runs/train/weights/last.pt` if it exists.
        stop_event: set it to cancel between batches.
    """
    config = config or TrainConfig()
    work_dir = Path(work_dir).resolve()
    configure_offline(work_dir)
    import torch
    from ultralytics import YOLO

    disable_sync()
    spec = read_dataset_spec(dataset_dir)
    project, name = work_dir / "runs", "train"
    last = project / name / "weights" / "last.pt"
    say = log or (lambda _m: None)
    if resume and last.exists():
        say(f"resuming from {last}")
        model = YOLO(str(last))
    elif weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        from trainer.backbone import classifier_start

        start = classifier_start(Path(weights), Path(dataset_dir), work_dir, say)
        say(f"fine-tuning {start}")
        model = YOLO(str(start))
    else:
        say("no pretrained weights given: training from yolov8n-cls.yaml")
        model = YOLO("yolov8n-cls.yaml")

    def on_train_start(trainer: Any) -> None:
        torch.set_num_threads(config.threads)  # ultralytics pins CPU training to cpu_count - 1
        if config.channels_last:  # in place: the optimiser keeps the same parameters
            trainer.model.to(memory_format=torch.channels_last)

    def on_batch_end(trainer: Any) -> None:
        if stop_event is not None and stop_event.is_set() and not trainer.stop:
            say("cancelling after the current batch...")
            trainer.stop = True

    def on_fit_epoch_end(trainer: Any) -> None:
        metrics = dict(getattr(trainer, "metrics", {}) or {})
        loss = _scalar(getattr(trainer, "tloss", None))
        top1 = metrics.get("metrics/accuracy_top1")
        val_loss = metrics.get("val/loss")
        epoch = int(trainer.epoch) + 1
        if on_epoch and epoch <= int(trainer.epochs):  # the final re-validation of best.pt fires once more
            on_epoch(EpochStats(epoch, int(trainer.epochs), loss,
                                float(top1) if top1 is not None else None,
                                float(val_loss) if val_loss is not None else None))
        if stop_event is not None and stop_event.is_set():
            trainer.stop = True

    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_batch_end", on_batch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    if resume and last.exists():
        try:
            with cpu_bf16_autocast():  # a resumed run keeps the precision it was started with
                model.train(resume=True)
        except AssertionError as exc:  # ultralytics: "training ... is finished, nothing to resume"
            if "nothing to resume" not in str(exc):
                raise
            say("training had already finished; nothing to resume")
    else:
        say(f"training precision: {'bfloat16 autocast' if use_bf16(config.precision) else 'float32'} on the CPU")
        with cpu_bf16_autocast():
            model.train(**_train_args(config, Path(dataset_dir).resolve(), spec.size, project, name))
    if stop_event is not None and stop_event.is_set():
        raise InterruptedError("training cancelled")
    best = project / name / "weights" / "best.pt"
    if not best.exists():
        best = last
    if not best.exists():
        raise RuntimeError(f"training produced no checkpoint in {project / name / 'weights'}")
    return best
