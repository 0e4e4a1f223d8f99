"""Dense blur-map supervision: train YOLOv8n-cls with a second, per-region target while it learns the class.

A from-scratch network gets one label per image: "subject defocused" says nothing about *where* the blur is,
so with ~500 source photos it has to discover by itself that the runner is the subject and that bokeh is the
mirror image of a missed focus. Synthetic examples know more than their label: which pixels were blurred, how
(defocus or motion), and where the runner is. `train_dense` uses that as an auxiliary loss on the backbone's
last feature map (7 x 7 cells at 224 px): for every cell, the share of it that is sharp / defocused / motion
blurred, and the share of it covered by the runner's mask. The auxiliary head is dropped at the end; what is
saved is a plain YOLOv8n-cls checkpoint that `export`, `evaluate` and ultralytics fine-tuning take as usual.

The loop follows ultralytics' classification trainer where it matters for the comparison (AdamW with beta1
0.937, nominal batch 64 by gradient accumulation, weight decay on weights only, 3 warm-up epochs, cosine
learning rate, gradient clipping at 10, EMA weights validated and saved, best epoch by validation top-1) and
applies the recipe's augmentation: a random-resized crop of 90-100% of the area at 3:4 to 4:3, scaled back up
bilinearly; a horizontal flip; brightness, contrast and saturation jitter. The crop and flip move the target
maps with the image. With `dense_weight=0` the same loop trains on the label alone: the control.

Targets come from the dataset's manifest (kind of every example) and the person masks the synthesis used
(`trainer.masks.person_mask`, same cache), so preparing a dataset is unchanged. torch and ultralytics are
imported inside functions, like the rest of the trainer.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine import __version__
from trainer.dataset import WORK_LONG_SIDE, ManifestRow, _load_working, read_manifest
from trainer.train import EpochStats, use_bf16

GRID = 28  # target maps are kept at 4x the feature map's 7 x 7, so crops can move them with the image
#: Region targets by kind: which part of the frame is blurred, and how (1 defocus, 2 motion).
WHOLE_FRAME = {"defocus": 1, "shake": 2, "linear_motion": 2}
SUBJECT = {"subject_defocus": 1, "subject_motion": 2}
BACKGROUND = {"bokeh": 1, "panning": 2}
NO_BLUR = frozenset({"original", "augmented", "clean", "high_iso"})
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class DenseConfig:
    epochs: int = 33
    batch: int = 16
    nbs: int = 64  # nominal batch: gradients are accumulated over nbs / batch batches, as ultralytics does
    lr0: float = 0.001
    lrf: float = 0.01
    momentum: float = 0.937  # AdamW beta1
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    weight_decay: float = 0.001
    dropout: float = 0.3
    hsv_s: float = 0.4  # saturation jitter (ColorJitter's saturation)
    hsv_v: float = 0.3  # brightness and contrast jitter
    crop_scale: float = 0.1  # random-resized crop area (1 - crop_scale, 1)
    fliplr: float = 0.5
    dense_weight: float = 1.0  # weight of the region loss; 0 = the control (label only)
    person_weight: float = 0.5  # weight of the runner-mask part within the region loss
    threads: int = 2
    seed: int = 0
    time_hours: float | None = None  # a wall-time budget: after the first epoch the epochs are fitted to it
    patience: int = 100
    precision: str = "auto"  # as trainer.train.TrainConfig.precision: bfloat16 autocast where the CPU has it


@dataclass(frozen=True)
class Targets:
    """Region targets of one example at GRID x GRID: blurred share, blur type, where that is known, runner mask."""

    blur: np.ndarray  # float32 GRID x GRID in [0, 1]: share of the cell that is blurred
    blur_type: int  # 0 none, 1 defocus, 2 motion
    known: np.ndarray  # float32 GRID x GRID in [0, 1]: share of the cell whose blur is known
    person: np.ndarray  # float32 GRID x GRID in [0, 1]
    person_known: bool


def _to_grid(mask: np.ndarray) -> np.ndarray:
    import cv2

    return np.clip(cv2.resize(mask.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA), 0.0, 1.0)


def region_targets(kind: str, label: str, mask: np.ndarray | None) -> Targets:
    """What an example of `kind` (and class `label`) shows where, given the runner's mask at the synthesis size.

    Only what the example's making tells is a target. A sharp photo's background may be real bokeh, so a sharp
    original (or a subject-blur example made from one) says nothing about its background, only that the runner
    is sharp. Augmented copies are cropped and flipped: their runner's position is unknown.
    """
    ones, zeros = np.ones((GRID, GRID), np.float32), np.zeros((GRID, GRID), np.float32)
    m = _to_grid((mask >= 0.5).astype(np.float32)) if mask is not None else None
    person, person_known = (m, True) if m is not None and kind != "augmented" else (zeros, False)
    if kind in WHOLE_FRAME:
        return Targets(ones, WHOLE_FRAME[kind], ones, person, person_known)
    if kind in SUBJECT or kind in BACKGROUND:
        if m is None:
            raise ValueError(f"a {kind} example needs the person mask it was made with")
        if kind in SUBJECT:  # the runner is blurred; the background is whatever the photo had
            return Targets(ones, SUBJECT[kind], m, person, person_known)
        return Targets(1.0 - m, BACKGROUND[kind], ones, person, person_known)  # sharp runner, blurred background
    if kind in NO_BLUR:
        if label == "defocused_blurred":  # a real photo of the class: the whole frame is out of focus
            return Targets(ones, 1, ones, person, person_known)
        if label != "sharp":  # real motion or subject blur: where is not known
            return Targets(zeros, 0, zeros, person, person_known)
        return Targets(zeros, 0, person if person_known else zeros, person, person_known)  # the runner is sharp
    raise ValueError(f"no region targets for kind {kind!r}")


def build_targets(rows: Sequence[ManifestRow], mask_dir: Path | None, log: LogFn | None = None) -> dict[str, Targets]:
    """Targets for every made example in `rows` (file -> Targets), one mask look-up per source photo."""
    from trainer.masks import person_mask

    masks: dict[str, np.ndarray | None] = {}
    out: dict[str, Targets] = {}
    for row in rows:
        if row.error or not row.file:
            continue
        if row.source not in masks:
            base = _load_working(Path(row.source), WORK_LONG_SIDE)
            masks[row.source] = person_mask(base, Path(row.source), mask_dir)
        out[row.file] = region_targets(row.kind, row.label, masks[row.source])
    if log:
        log(f"region targets for {len(out)} examples from {len(masks)} photos "
            f"({sum(m is not None for m in masks.values())} with a runner mask)")
    return out


# --------------------------------------------------------------------------- tensors and augmentation
def _load_split(dataset: Path, rows: Sequence[ManifestRow], split: str, classes: Sequence[str]) -> tuple[Any, Any, list[str]]:
    import torch

    files = [r.file for r in rows if r.split == split and r.file and not r.error]
    if not files:
        raise ValueError(f"{dataset}: no {split} images")
    arrays = []
    for f in files:
        with Image.open(dataset / f) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{dataset}: {split} images differ in size ({sorted(shapes)[:2]}); prepare writes one size")
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[Path(f).parent.name] for f in files]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), files


def _target_tensors(files: Sequence[str], targets: dict[str, Targets]) -> tuple[Any, Any]:
    """(B, 5, GRID, GRID) maps [known*sharp, known*defocus, known*motion, known, person], (B,) person known.

    The known share is carried as a weight, so cropping and pooling keep targets and weights consistent."""
    import torch

    maps = np.zeros((len(files), 5, GRID, GRID), np.float32)
    person_known = np.zeros(len(files), np.float32)
    for i, f in enumerate(files):
        t = targets[f]
        maps[i, 0] = t.known * (1.0 - t.blur)
        if t.blur_type:
            maps[i, t.blur_type] = t.known * t.blur
        maps[i, 3] = t.known
        maps[i, 4] = t.person
        person_known[i] = float(t.person_known)
    return torch.from_numpy(maps), torch.from_numpy(person_known)


def crop_params(gen: Any, n: int, height: int, width: int, crop_scale: float, fliplr: float) -> Any:
    """(n, 2, 3) affine sampling grids' thetas: torchvision RandomResizedCrop's box choice, plus a flip."""
    import torch

    thetas = torch.zeros(n, 2, 3)
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for k in range(n):
        w, h, i, j = width, height, 0, 0
        if crop_scale > 0:
            for _ in range(10):
                area = height * width * float(torch.empty(1).uniform_(1 - crop_scale, 1.0, generator=gen))
                aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
                cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if 0 < cw <= width and 0 < ch <= height:
                    w, h = cw, ch
                    i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
                    j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
                    break
        flip = -1.0 if float(torch.rand(1, generator=gen)) < fliplr else 1.0
        thetas[k, 0, 0] = flip * w / width
        thetas[k, 0, 2] = (2 * j + w) / width - 1
        thetas[k, 1, 1] = h / height
        thetas[k, 1, 2] = (2 * i + h) / height - 1
    return thetas


def augment(images: Any, maps: Any, gen: Any, cfg: DenseConfig) -> tuple[Any, Any]:
    """Crop + flip (the maps move with the image), then colour jitter. uint8 NCHW -> float in [0, 1]."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    theta = crop_params(gen, n, h, w, cfg.crop_scale, cfg.fliplr)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    x = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mgrid = F.affine_grid(theta, [n, maps.shape[1], maps.shape[2], maps.shape[3]], align_corners=False)
    m = F.grid_sample(maps, mgrid, mode="bilinear", padding_mode="border", align_corners=False)

    def factors(amount: float) -> Any:
        return torch.empty(n, 1, 1, 1).uniform_(max(0.0, 1 - amount), 1 + amount, generator=gen)

    gray_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    if cfg.hsv_v > 0:
        x = (x * factors(cfg.hsv_v)).clamp(0, 1)
        mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = ((x - mean) * factors(cfg.hsv_v) + mean).clamp(0, 1)
    if cfg.hsv_s > 0:
        gray = (x * gray_w).sum(1, keepdim=True)
        x = ((x - gray) * factors(cfg.hsv_s) + gray).clamp(0, 1)
    return x, m


# --------------------------------------------------------------------------- model
def _feature_net(classes: Sequence[str], weights: Path | None, dropout: float) -> Any:
    import torch
    from ultralytics.nn.tasks import ClassificationModel

    if weights is not None:
        if Path(weights).suffix.lower() != ".pt":
            raise ValueError(f"{weights}: the region-target loop starts from a YOLOv8n-cls .pt of the dataset's classes "
                             "(train a detector's or an ONNX backbone with the ultralytics trainer first)")
        ckpt = torch.load(str(weights), map_location="cpu", weights_only=False)
        net = (ckpt.get("ema") or ckpt["model"]).float()
        got = tuple(str(net.names[i]) for i in sorted(net.names))
        if got != tuple(classes):
            raise ValueError(f"{weights}: classes {got} are not the dataset's {tuple(classes)}")
    else:
        net = ClassificationModel("yolov8n-cls.yaml", nc=len(classes), verbose=False)
    net.names = dict(enumerate(classes))
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _dense_head(channels: int) -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.SiLU(), nn.Conv2d(64, 4, 1))


def _forward(net: Any, x: Any) -> tuple[Any, Any]:
    feats = net.model[:-1](x)
    return net.model[-1](feats), feats


def _optimizer(net: Any, head: Any, cfg: DenseConfig) -> Any:
    import torch
    import torch.nn as nn

    decay, no_decay, bias = [], [], []
    for module in (*net.modules(), *head.modules()):
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                bias.append(p)
            elif isinstance(module, nn.BatchNorm2d):
                no_decay.append(p)
            else:
                decay.append(p)
    wd = cfg.weight_decay * cfg.batch * max(round(cfg.nbs / cfg.batch), 1) / cfg.nbs
    opt = torch.optim.AdamW(bias, lr=cfg.lr0, betas=(cfg.momentum, 0.999), weight_decay=0.0)
    opt.add_param_group({"params": decay, "weight_decay": wd})
    opt.add_param_group({"params": no_decay, "weight_decay": 0.0})
    return opt


def _top1(net: Any, x: Any, y: Any, batch: int = 64) -> float:
    import torch

    net.eval()
    right = 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out = net(x[s : s + batch].float() / 255.0)
            probs = out[0] if isinstance(out, (list, tuple)) else out
            right += int((probs.argmax(1) == y[s : s + batch]).sum())
    return right / len(x)


def _save_classifier(net: Any, path: Path, cfg: DenseConfig, epoch: int, top1: float) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": deepcopy(net).float().eval(), "train_args": {"task": "classify", **asdict(cfg)},
                "version": __version__, "epoch": epoch, "best_fitness": top1,
                "date": datetime.datetime.now().isoformat(), "blurflag_trainer": "dense"}, tmp)
    tmp.replace(path)


def train_dense(
    dataset_dir: Path,
    work_dir: Path,
    config: DenseConfig | None = None,
    mask_dir: Path | None = None,
    weights: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    log: LogFn | None = None,
    stop_event: threading.Event | None = None,
) -> Path:
    """Train on a prepared dataset (its manifest says each example's kind) and return the path of `best.pt`.

    Checkpoints go to `work_dir/runs/dense/` (`best.pt`, `last.pt`, and `state.pt` for `resume`).
    """
    import torch
    import torch.nn.functional as F
    from ultralytics.utils.torch_utils import ModelEMA

    cfg = config or DenseConfig()
    say = log or (lambda _m: None)
    dataset, out = Path(dataset_dir), Path(work_dir) / "runs" / "dense"
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    bf16 = use_bf16(cfg.precision)
    rows = read_manifest(dataset)
    classes = sorted(p.name for p in (dataset / "train").iterdir() if p.is_dir())
    x_train, y_train, files = _load_split(dataset, rows, "train", classes)
    x_val, y_val, _ = _load_split(dataset, rows, "val", classes)
    maps, known = _target_tensors(files, build_targets([r for r in rows if r.split == "train"], mask_dir, say))
    net = _feature_net(classes, weights, cfg.dropout)
    with torch.no_grad():
        channels = _forward(net.eval(), x_train[:1].float() / 255.0)[1].shape[1]
    head = _dense_head(channels)
    opt = _optimizer(net, head, cfg)
    ema = ModelEMA(net)
    gen = torch.Generator().manual_seed(cfg.seed)
    nb = math.ceil(len(x_train) / cfg.batch)
    accumulate = max(round(cfg.nbs / cfg.batch), 1)
    epochs, start, best_top1, best_epoch = cfg.epochs, 0, -1.0, -1
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        st = torch.load(str(state_path), map_location="cpu", weights_only=False)
        net.load_state_dict(st["net"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        ema.ema.load_state_dict(st["ema"])
        ema.updates, gen = st["ema_updates"], st["gen"]
        epochs, start, best_top1, best_epoch = st["epochs"], st["epoch"] + 1, st["best_top1"], st["best_epoch"]
        say(f"resuming after epoch {start} of {epochs}")
    say(f"dense training: {len(x_train)} train / {len(x_val)} val images, classes {classes}, "
        f"dense weight {cfg.dense_weight}, {epochs} epochs, {cfg.threads} threads, "
        f"{'bfloat16 autocast' if bf16 else 'float32'}")
    t_start = time.monotonic()
    warm = max(round(cfg.warmup_epochs * nb), 100) if cfg.warmup_epochs > 0 else 0

    def lf(e: float) -> float:
        return ((1 - math.cos(e * math.pi / epochs)) / 2) * (cfg.lrf - 1) + 1

    epoch, last_step = start, nb * start - 1
    while epoch < epochs:
        net.train()
        head.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        opt.zero_grad()
        for b in range(nb):
            ni = b + nb * epoch
            if ni <= warm:
                frac = ni / max(warm, 1)
                for gi, g in enumerate(opt.param_groups):
                    g["lr"] = (cfg.warmup_bias_lr if gi == 0 else 0.0) * (1 - frac) + cfg.lr0 * lf(epoch) * frac
                    g["betas"] = (cfg.warmup_momentum + (cfg.momentum - cfg.warmup_momentum) * frac, 0.999)
            idx = order[b * cfg.batch : (b + 1) * cfg.batch]
            x, m = augment(x_train[idx], maps[idx], gen, cfg)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits, feats = _forward(net, x)
                pred = head(feats) if cfg.dense_weight > 0 else None
            logits = logits.float()
            loss = F.cross_entropy(logits, y_train[idx])
            if pred is not None:
                pred = pred.float()
                cells = F.adaptive_avg_pool2d(m, pred.shape[-2:])
                # per cell: cross-entropy against the known shares, weighted by how much of the cell is known
                weight = cells[:, 3]
                target = cells[:, :3] / weight.unsqueeze(1).clamp(min=1e-6)
                ce = -(target * F.log_softmax(pred[:, :3], 1)).sum(1)
                blur_loss = (ce * weight).sum() / weight.sum().clamp(min=1.0)
                w = known[idx].view(-1, 1, 1).expand_as(cells[:, 4])  # cells of images whose runner is known
                bce = F.binary_cross_entropy_with_logits(pred[:, 3], cells[:, 4], reduction="none")
                person_loss = (bce * w).sum() / w.sum().clamp(min=1.0)
                loss = loss + cfg.dense_weight * (blur_loss + cfg.person_weight * person_loss)
            loss.backward()
            losses.append(float(loss.detach()))
            acc = max(1, round(1 + (accumulate - 1) * ni / max(warm, 1))) if ni <= warm else accumulate
            if ni - last_step >= acc or b == nb - 1:
                last_step = ni
                torch.nn.utils.clip_grad_norm_([*net.parameters(), *head.parameters()], max_norm=10.0)
                opt.step()
                opt.zero_grad()
                ema.update(net)
            if stop_event is not None and stop_event.is_set():
                raise InterruptedError("training cancelled")
        for gi, g in enumerate(opt.param_groups):
            g["lr"] = cfg.lr0 * lf(epoch + 1)
        top1 = _top1(ema.ema, x_val, y_val)
        if top1 > best_top1:
            best_top1, best_epoch = top1, epoch
            _save_classifier(ema.ema, out / "best.pt", cfg, epoch, top1)
        _save_classifier(ema.ema, out / "last.pt", cfg, epoch, top1)
        if epoch == start and cfg.time_hours:
            per_epoch = (time.monotonic() - t_start) / (epoch + 1 - start)
            fitted = max(epoch + 1, min(epochs, int(cfg.time_hours * 3600 / per_epoch)))
            if fitted != epochs:
                say(f"{per_epoch:.0f} s per epoch: {fitted} epochs fit the {cfg.time_hours} h budget")
                epochs = fitted
        torch.save({"net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                    "ema": ema.ema.state_dict(), "ema_updates": ema.updates, "gen": gen, "epochs": epochs,
                    "epoch": epoch, "best_top1": best_top1, "best_epoch": best_epoch}, state_path)
        say(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, val top-1 {top1:.4f} "
            f"(best {best_top1:.4f} at {best_epoch + 1}), {time.monotonic() - t_start:.0f} s")
        if on_epoch:
            on_epoch(EpochStats(epoch + 1, epochs, float(np.mean(losses)), top1, None))
        if epoch - best_epoch >= cfg.patience:
            say(f"no better validation top-1 for {cfg.patience} epochs: stopping")
            break
        epoch += 1
    return out / "best.pt"
