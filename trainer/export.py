"""`best.pt` -> ONNX + class_names.json in a model folder the engine loads, verified by a parity check."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.model import CLASS_NAMES_FILE, REDUCING_GAP_METADATA_KEY, RESIZE_METADATA_KEY, load_classifier
from engine.preprocess import InputSpec, load_model_input
from trainer.env import configure_offline

ONNX_NAME = "blurflag.onnx"
PARITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportReport:
    model_dir: Path
    names: tuple[str, ...]
    max_abs_diff: float
    images_checked: int


def torch_probabilities(pt_path: Path, batch: np.ndarray) -> np.ndarray:
    """Class probabilities from the PyTorch checkpoint for an already preprocessed batch."""
    import torch
    from ultralytics import YOLO

    model: Any = YOLO(str(pt_path)).model
    model = model.float().eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.detach().cpu().numpy().astype(np.float64)


def parity_check(pt_path: Path, model_dir: Path, images: Sequence[Path]) -> float:
    """Max absolute probability difference between PyTorch and the engine's ONNX run, same preprocessing."""
    classifier = load_classifier(model_dir)
    batch = np.stack([load_model_input(p, classifier.spec) for p in images])
    onnx_probs = classifier.predict(batch)
    torch_probs = torch_probabilities(pt_path, batch)
    return float(np.abs(onnx_probs - torch_probs).max())


def export_onnx(
    pt_path: Path,
    model_dir: Path,
    spec: InputSpec,
    parity_images: Sequence[Path] = (),
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export, write `model_dir/blurflag.onnx` + `class_names.json`, and verify parity on `parity_images`."""
    pt_path = Path(pt_path).resolve()
    configure_offline(pt_path.parent)
    import onnx
    from ultralytics import YOLO

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    others = [p for p in model_dir.glob("*.onnx") if p.name != ONNX_NAME]
    if others:
        raise FileExistsError(f"{model_dir} already holds another model ({others[0].name}); use an empty folder")
    with tempfile.TemporaryDirectory(prefix="blurflag-export-") as tmp:
        local_pt = Path(tmp) / "best.pt"
        shutil.copy2(pt_path, local_pt)  # ultralytics writes the .onnx beside the .pt
        yolo = YOLO(str(local_pt))
        net: Any = yolo.model
        names_map = net.names
        names = tuple(str(names_map[i]) for i in sorted(names_map))
        exported = Path(yolo.export(format="onnx", imgsz=spec.size, dynamic=True, simplify=True, device="cpu", verbose=False))
        proto = onnx.load(str(exported))
        meta = {p.key: p.value for p in proto.metadata_props}
        meta[RESIZE_METADATA_KEY] = spec.resize
        meta[REDUCING_GAP_METADATA_KEY] = "none" if spec.reducing_gap is None else str(spec.reducing_gap)
        meta["blurflag_version"] = __version__
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=str(v))
        staged = model_dir / (ONNX_NAME + ".tmp")
        onnx.save(proto, str(staged))
        staged.replace(model_dir / ONNX_NAME)
    (model_dir / CLASS_NAMES_FILE).write_text(json.dumps(list(names), indent=2) + "\n", encoding="utf-8")
    diff = parity_check(pt_path, model_dir, list(parity_images)) if parity_images else float("nan")
    if parity_images and not diff <= tolerance:
        raise RuntimeError(f"ONNX/PyTorch parity failed: max |dp| = {diff:.2e} > {tolerance:.0e}")
    return ExportReport(model_dir, names, diff, len(parity_images))
