"""Several training runs of one network -> one network whose weights are their average (a "model soup", Wortsman et
al., ICML 2022).

Runs that start from the same pretrained weights and differ only in their training seed end in one basin of the loss,
so the average of their weights is itself a good network, often better than each run, at the inference cost of one.
Runs from different starts do not: their average is noise. `make_soup` therefore checks the soup against its runs on
validation images and refuses one that is far worse than its worst run. BatchNorm statistics are not linear in the
weights, so they are measured again on training images through the engine's own preprocessing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.preprocess import load_model_input
from trainer.dataset import read_dataset_spec
from trainer.env import configure_offline
from trainer.export import ExportReport, export_onnx

#: Training images whose BatchNorm statistics the soup gets (spread over classes and kinds).
CALIBRATION_IMAGES = 512
#: Validation images the soup is checked on against its runs.
CHECK_IMAGES = 256
#: A soup whose validation top-1 falls more than this below its worst run's is refused (runs from different starts).
MAX_DROP = 0.05
_BATCH = 32


class SoupError(ValueError):
    """The runs cannot be averaged into one network."""


@dataclass(frozen=True)
class SoupReport:
    checkpoint: Path
    export: ExportReport
    runs: int
    run_top1: tuple[float, ...]
    soup_top1: float
    images_checked: int


def _load_network(path: Path) -> tuple[dict[str, Any], Any]:
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    net = ckpt.get("ema") if isinstance(ckpt, dict) and ckpt.get("ema") is not None else ckpt.get("model")
    if net is None or not hasattr(net, "state_dict"):
        raise SoupError(f"{path}: not an ultralytics checkpoint (no model inside)")
    return ckpt, net.float().eval()


def average_weights(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each floating-point tensor over `states`; other tensors (BatchNorm batch counts) from the first."""
    first = states[0]
    for i, sd in enumerate(states[1:], start=2):
        if sd.keys() != first.keys() or any(sd[k].shape != first[k].shape for k in first):
            raise SoupError(f"run {i} is not the same network as run 1 (other layers or shapes)")
    return {k: (sum(sd[k] for sd in states) / len(states)) if v.is_floating_point() else v.clone()
            for k, v in first.items()}


def _batches(paths: Sequence[Path], dataset: Path) -> list[np.ndarray]:
    spec = read_dataset_spec(dataset)
    return [np.stack([load_model_input(p, spec) for p in paths[i:i + _BATCH]]).astype(np.float32)
            for i in range(0, len(paths), _BATCH)]


def recalibrate_batchnorm(net: Any, batches: Sequence[np.ndarray]) -> None:
    """Measure every BatchNorm layer's running mean and variance again, as a plain average over `batches`."""
    import torch

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over all batches
    net.train()
    with torch.no_grad():
        for b in batches:
            net(torch.from_numpy(b))
    net.eval()


def _top1(net: Any, batches: Sequence[np.ndarray], labels: Sequence[int]) -> float:
    import torch

    with torch.no_grad():
        preds = [net(torch.from_numpy(b)) for b in batches]
    out = torch.cat([p[0] if isinstance(p, (list, tuple)) else p for p in preds]).argmax(1).numpy()
    return float(np.mean(out == np.asarray(labels)))


def make_soup(checkpoints: Sequence[Path], out_dir: Path, dataset: Path, calibrate: bool = True,
              threads: int | None = None) -> SoupReport:
    """Average `checkpoints` (best.pt of runs from one start) into OUT_DIR/best.pt and export OUT_DIR/model.

    Args:
        checkpoints: two or more ultralytics YOLOv8n-cls checkpoints of the same network.
        out_dir: gets `best.pt` (the soup) and `model/` (its ONNX export, the engine's layout).
        dataset: the prepared dataset the runs trained on: its training images recalibrate BatchNorm, its validation
            images check the soup against the runs, and its input spec is the model's.
        calibrate: recalibrate BatchNorm (otherwise the runs' statistics are averaged like the weights).
        threads: torch threads (default: torch's).
    """
    import torch

    from trainer.backbone import pick_calibration_images
    from trainer.evaluate import collect_samples

    if len(checkpoints) < 2:
        raise SoupError("a soup needs at least two runs")
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    if (out_dir / "model").exists():
        raise FileExistsError(f"{out_dir / 'model'} exists; use an empty folder")
    configure_offline(out_dir)   # before the checkpoints' unpickling imports ultralytics
    loaded = [_load_network(Path(p)) for p in checkpoints]
    nets = [net for _, net in loaded]
    names = [tuple(net.names[i] for i in sorted(net.names)) for net in nets]
    if any(n != names[0] for n in names):
        raise SoupError(f"the runs disagree on the classes: {names}")
    soup = copy.deepcopy(nets[0])
    soup.load_state_dict(average_weights([net.state_dict() for net in nets]))
    if calibrate:
        recalibrate_batchnorm(soup, _batches(pick_calibration_images(dataset, CALIBRATION_IMAGES), dataset))

    samples = collect_samples(dataset, "val")
    samples = samples[:: max(1, len(samples) // CHECK_IMAGES)][:CHECK_IMAGES]
    if not samples:
        raise SoupError(f"{dataset}: no validation images to check the soup on")
    index = {name: i for i, name in enumerate(names[0])}
    labels = [index[s.label] for s in samples]
    batches = _batches([s.path for s in samples], dataset)
    run_top1 = tuple(_top1(net, batches, labels) for net in nets)
    soup_top1 = _top1(soup, batches, labels)
    if soup_top1 < min(run_top1) - MAX_DROP:
        raise SoupError(f"the soup's validation top-1 is {soup_top1:.3f}, its runs' {min(run_top1):.3f}-"
                        f"{max(run_top1):.3f}: these runs did not start from the same weights")

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = dict(loaded[0][0])
    ckpt.update(model=soup.half(), ema=None, optimizer=None,
                blurflag_soup=[str(Path(p).resolve()) for p in checkpoints])
    pt = out_dir / "best.pt"
    torch.save(ckpt, pt)
    report = export_onnx(pt, out_dir / "model", read_dataset_spec(dataset), [s.path for s in samples[::16][:16]])
    return SoupReport(pt, report, len(nets), run_top1, soup_top1, len(samples))
