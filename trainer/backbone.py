"""Start YOLOv8n-cls from the backbone of another trained YOLOv8n network instead of from random weights.

A YOLOv8 detector's first nine layers (`model.0` .. `model.8`) are, layer for layer, the backbone of the YOLOv8
classifier of the same scale (ultralytics' `yolov8.yaml` and `yolov8-cls.yaml` share them); only the head
differs. So the backbone of any YOLOv8n detector or classifier the user has on disk, as an ultralytics `.pt`
or as an ultralytics ONNX export, can start a BlurFlag model, and nothing needs downloading.

An ONNX export has each BatchNorm folded into its convolution (weight W, bias b). We put W back into the
convolution and choose the BatchNorm so that it passes W*x + b through unchanged in *both* modes: in evaluation
mode with running mean mu and variance var, and in training mode (where BatchNorm normalises by the batch's own
statistics) with gamma = sqrt(var + eps) and beta = mu + b, mu and var measured on calibration images. Without
the calibration, the first training batches would see a network whose every layer is re-normalised, i.e. not
the pretrained one.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.preprocess import InputSpec, load_model_input

#: `model.0` .. `model.8`: the layers YOLOv8 detectors and classifiers share.
BACKBONE_LAYERS = 9
CALIBRATION_BATCH = 16

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class BackboneReport:
    out: Path
    convolutions: int  # backbone convolutions copied
    calibration_images: int  # 0 for a `.pt` source (its BatchNorm statistics are copied as they are)
    max_abs_diff: float  # backbone output (or probabilities), converted network vs the source, calibration images
    head: bool  # the source's classifier head was taken over too


def _layer(key: str) -> int:
    parts = key.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "model" and parts[1].isdigit() else -1


def _onnx_convolutions(model: Any, layers: int) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if 0 <= _layer(i.name) < layers}


def _onnx_class_names(model: Any) -> tuple[str, ...] | None:
    """The class names an ultralytics classifier export records (`names` metadata), else None."""
    import ast

    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("task") != "classify" or "names" not in meta:
        return None
    names = ast.literal_eval(meta["names"])
    return tuple(str(names[i]) for i in sorted(names))


def _onnx_output(source: Path, model: Any, batch: np.ndarray, layers: int) -> np.ndarray:
    """The source graph's output after `layers` layers (the last node of `/model.{layers-1}/`), for `batch`."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: one more graph output
    nodes = [n for n in model.graph.node if n.name.startswith(f"/model.{layers - 1}/")]
    if not nodes:
        raise ValueError(f"{source}: no node of layer model.{layers - 1}: not an ultralytics YOLOv8 export")
    name = nodes[-1].output[0]
    if name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    n, _c, h, w = feed.shape
    if any(isinstance(d, int) and d != want for d, want in ((h, batch.shape[2]), (w, batch.shape[3]))):
        raise ValueError(f"{source}: exported for {h}x{w} inputs only, not {batch.shape[2]}; export it with "
                         f"dynamic=True or at imgsz={batch.shape[2]}")
    step = 1 if isinstance(n, int) else CALIBRATION_BATCH  # a static batch dimension is 1 in ultralytics exports
    return np.concatenate([session.run([name], {feed.name: batch[i:i + step]})[0]
                           for i in range(0, len(batch), step)])


def _forward(net: Any, batch: np.ndarray, layers: int = BACKBONE_LAYERS) -> np.ndarray:
    """`net`'s output after its first `layers` layers (all of them: the class probabilities)."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(batch), CALIBRATION_BATCH):
            t = torch.from_numpy(batch[i:i + CALIBRATION_BATCH])
            for layer in net.model[:layers]:
                t = layer(t)
            outs.append((t[0] if isinstance(t, tuple) else t).numpy())  # Classify gives (probs, logits) in eval
    return np.concatenate(outs)


def _conv_output_stats(net: Any, convs: dict[str, Any], batch: np.ndarray) -> dict[str, tuple[Any, Any]]:
    """Per-channel mean and (biased) variance of each of `convs`' outputs, over `batch`."""
    import torch

    sums: dict[str, list[Any]] = {}

    def hook(name: str) -> Callable[[Any, Any, Any], None]:
        def record(_mod: Any, _inp: Any, out: Any) -> None:
            x = out.double()
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += x.shape[0] * x.shape[2] * x.shape[3]
            s[1] = s[1] + x.sum((0, 2, 3))
            s[2] = s[2] + (x * x).sum((0, 2, 3))
        return record

    handles = [mod.register_forward_hook(hook(name)) for name, mod in convs.items()]
    try:
        _forward(net, batch, max(_layer(name) for name in convs) + 1)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[name] = (mean.float(), torch.clamp(s2 / n - mean * mean, min=0.0).float())
    return out


def pick_calibration_images(dataset: Path, count: int = 256) -> list[Path]:
    """`count` training images of a prepared dataset, spread evenly over its classes and kinds."""
    from trainer.evaluate import collect_samples

    samples = collect_samples(dataset, "train")
    if not samples:
        raise ValueError(f"{dataset}: no training images")
    step = max(1, len(samples) // max(1, count))
    return [s.path for s in samples[::step][:count]]


def import_backbone(
    source: Path,
    out: Path,
    calibration_images: Sequence[Path],
    spec: InputSpec,
    class_names: Sequence[str] = (),
    log: LogFn | None = None,
) -> BackboneReport:
    """Write a YOLOv8n-cls checkpoint (`out`, for `--weights`) whose backbone is `source`'s.

    The head starts fresh, except from the ONNX export of a classifier with exactly `class_names` (BlurFlag's
    bundled model, for a dataset of its four classes): then the whole network is taken over, and training
    continues from the source model itself.

    Args:
        source: an ultralytics YOLOv8n `.pt` (detector or classifier) or its ONNX export.
        calibration_images: photos like the training set's (the training split), for the BatchNorm statistics of
            an ONNX source and for the check that the converted network computes what the source does.
        spec: the input pipeline the model will be trained with.
        class_names: the classes the model will be trained on, in order.
    """
    from trainer.env import configure_offline

    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"backbone source not found: {source}")
    if source.suffix.lower() not in (".onnx", ".pt"):
        raise ValueError(f"{source}: want an ultralytics .pt or .onnx")
    if not calibration_images:
        raise ValueError("no calibration images")
    configure_offline(out.parent)
    import torch
    from ultralytics.nn.tasks import ClassificationModel
    from ultralytics.utils import __version__

    say = log or (lambda _m: None)
    is_onnx = source.suffix.lower() == ".onnx"
    proto: Any = None  # the ONNX source, read once
    if is_onnx:
        import onnx

        from trainer.ensemble import ENSEMBLE_METADATA_KEY, is_ensemble, member_model

        proto = onnx.load(str(source))
        if is_ensemble(proto):  # e.g. the bundled model: start from its first YOLOv8n member
            members = json.loads(next(p.value for p in proto.metadata_props if p.key == ENSEMBLE_METADATA_KEY))
            for index in range(len(members.get("members", []))):
                member = member_model(proto, index)
                if _onnx_convolutions(member, 1):  # a YOLOv8n export (a MobileNetV2 member has no model.0.conv)
                    proto = member
                    say(f"{source.name} is an ensemble: starting from its member {index + 1} of "
                        f"{len(members['members'])}, the first YOLOv8n network")
                    break
            else:
                raise ValueError(f"{source}: an ensemble without a YOLOv8n network (e.g. only MobileNetV2 members): "
                                 "nothing YOLOv8n-cls can start from")
    keep_head = is_onnx and bool(class_names) and _onnx_class_names(proto) == tuple(class_names)
    layers = BACKBONE_LAYERS + 1 if keep_head else BACKBONE_LAYERS
    net: Any = ClassificationModel("yolov8n-cls.yaml", nc=len(class_names) if keep_head else 1000, verbose=False)
    if keep_head:
        net.names = dict(enumerate(class_names))
    net.eval()
    state = net.state_dict()
    modules = dict(net.named_modules())
    convs = {name[: -len(".conv")]: modules[name[: -len(".conv")]] for name in modules  # ultralytics Conv: conv + bn
             if name.endswith(".conv") and 0 <= _layer(name) < layers and hasattr(modules[name[: -len(".conv")]], "bn")}
    # All calibration inputs are held at once: at most ~300 MB of them (256 at 224 px, 61 at 640 px).
    keep = max(CALIBRATION_BATCH, 300_000_000 // (12 * spec.size * spec.size))
    batch = np.stack([load_model_input(p, spec) for p in list(calibration_images)[:keep]])

    if is_onnx:
        weights = _onnx_convolutions(proto, layers)
        for base in convs:
            w, b = weights.get(base + ".conv.weight"), weights.get(base + ".conv.bias")
            if w is None or b is None or tuple(w.shape) != tuple(state[base + ".conv.weight"].shape):
                raise ValueError(f"{source}: no {base}.conv of the YOLOv8n-cls shape "
                                 f"{tuple(state[base + '.conv.weight'].shape)}: not a YOLOv8n export")
            state[base + ".conv.weight"] = torch.from_numpy(w.copy())
        if keep_head:
            for key in (f"model.{BACKBONE_LAYERS}.linear.weight", f"model.{BACKBONE_LAYERS}.linear.bias"):
                state[key] = torch.from_numpy(weights[key].copy())
        net.load_state_dict(state)
        # First BatchNorm = "+ b" in evaluation mode (the source network exactly), to measure what each
        # convolution puts out; then the BatchNorm that gives W*x + b in both modes.
        for base, mod in convs.items():
            mod.bn.running_mean.zero_()
            mod.bn.running_var.fill_(1.0 - mod.bn.eps)
            mod.bn.weight.data.fill_(1.0)
            mod.bn.bias.data.copy_(torch.from_numpy(weights[base + ".conv.bias"].copy()))
        stats = _conv_output_stats(net, {b: m.conv for b, m in convs.items()}, batch)
        for base, mod in convs.items():
            mean, var = stats[base]
            bias = mod.bn.bias.data.clone()
            mod.bn.running_mean.copy_(mean)
            mod.bn.running_var.copy_(var)
            mod.bn.weight.data.copy_(torch.sqrt(var + mod.bn.eps))
            mod.bn.bias.data.copy_(mean + bias)
        reference = _onnx_output(source, proto, batch, layers)
        calibrated = len(batch)
    else:
        ckpt = torch.load(str(source), map_location="cpu", weights_only=False)
        src_model: Any = None
        if isinstance(ckpt, dict):
            src_model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
        if not hasattr(src_model, "state_dict"):
            raise ValueError(f"{source}: not an ultralytics checkpoint")
        src_model = src_model.float().eval()
        src_state = src_model.state_dict()
        for key in state:
            if 0 <= _layer(key) < BACKBONE_LAYERS:
                if key not in src_state or src_state[key].shape != state[key].shape:
                    raise ValueError(f"{source}: no {key} of the YOLOv8n-cls shape: not a YOLOv8n model")
                state[key] = src_state[key].clone()
        net.load_state_dict(state)
        # Detectors use BatchNorm eps 1e-3, a classifier built from its yaml 1e-5, and training rebuilds the model
        # from the yaml: keep our eps and move the difference into the variance (same sqrt(var + eps)).
        src_modules = dict(src_model.named_modules())
        for base, mod in convs.items():
            mod.bn.running_var.add_(src_modules[base].bn.eps - mod.bn.eps)
        reference = _forward(src_model, batch)
        calibrated = 0
    diff = float(np.abs(_forward(net, batch, layers) - reference).max())
    scale = float(np.abs(reference).max())
    if not diff <= 1e-3 * max(1.0, scale):
        raise RuntimeError(f"{source}: converted network differs from the source by {diff:.3g} (scale {scale:.3g})")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net, "train_args": {"task": "classify"}, "version": __version__, "epoch": -1,
                "date": datetime.datetime.now().isoformat(), "blurflag_backbone_source": source.name}, out)
    say(f"{'whole model' if keep_head else 'backbone'} of {source.name}: {len(convs)} convolutions into {out}"
        + (f", BatchNorm calibrated on {calibrated} images" if calibrated else "")
        + f"; max |difference| to the source {diff:.2e}")
    return BackboneReport(out, len(convs), calibrated, diff, keep_head)


def classifier_start(weights: Path, dataset: Path, work_dir: Path, log: LogFn | None = None) -> Path:
    """`weights` as a YOLOv8n-cls checkpoint to train from: a classifier `.pt` as it is, anything else (an ONNX
    export, a detector) through its backbone, calibrated on `dataset`'s training images."""
    if weights.suffix.lower() == ".pt":
        from ultralytics import YOLO

        if YOLO(str(weights)).task == "classify":
            return weights
    from trainer.dataset import read_dataset_spec

    return import_backbone(weights, Path(work_dir) / "backbone.pt", pick_calibration_images(dataset),
                           read_dataset_spec(dataset), dataset_classes(dataset), log).out


def dataset_classes(dataset: Path) -> tuple[str, ...]:
    """A prepared dataset's classes in the order training numbers them (sorted folder names of train/)."""
    train = Path(dataset) / "train"
    return tuple(sorted(d.name for d in train.iterdir() if d.is_dir())) if train.is_dir() else ()
