"""A YOLOv8n-cls start from a YOLOv8n detector's backbone (`blurflag-train backbone`), from .pt and from ONNX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.preprocess import InputSpec, load_model_input
from tests.toydata import write_class_folders
from trainer.dataset import PrepareOptions, prepare

REPO = Path(__file__).resolve().parents[2]
HAS_TRAIN = all(__import__("importlib").util.find_spec(m) for m in ("torch", "ultralytics", "onnx"))
pytestmark = [pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)"), pytest.mark.slow]
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bb")
    src = write_class_folders(root / "src", per_class=6)
    out = root / "ds"
    prepare(src, out, PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1, balance=False))
    return out


def _detector(seed: int = 0, cfg: str = "yolov8n.yaml") -> object:
    """An untrained YOLOv8n detector with random BatchNorm statistics, so that folding BN changes the weights."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    det = YOLO(cfg).model
    for m in det.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return det.eval()


def _backbone(net: object, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        t = torch.from_numpy(batch)
        for layer in net.model[:9]:  # type: ignore[attr-defined]
            t = layer(t)
    return t.numpy()


def _calibration_batch(dataset: Path) -> np.ndarray:
    from trainer.backbone import pick_calibration_images

    return np.stack([load_model_input(p, InputSpec(size=SIZE, resize="stretch"))
                     for p in pick_calibration_images(dataset, 256)])


def test_onnx_export_backbone_is_rebuilt_exactly_and_calibrated(tmp_path: Path, ultralytics_env: None,
                                                                dataset: Path) -> None:
    import torch
    from ultralytics import YOLO

    det = _detector()
    torch.save({"model": det, "train_args": {"task": "detect"}}, tmp_path / "det.pt")
    onnx_path = Path(YOLO(str(tmp_path / "det.pt")).export(format="onnx", imgsz=SIZE, simplify=True, device="cpu"))
    out = tmp_path / "start.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "backbone", str(onnx_path), str(out),
                           "--dataset", str(dataset)],
                          check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "BatchNorm calibrated on" in proc.stdout

    start = YOLO(str(out))
    assert start.task == "classify"
    net = start.model.float().eval()
    batch = _calibration_batch(dataset)
    ref = _backbone(det, batch)
    # evaluation mode computes what the detector's backbone computes ...
    assert np.abs(_backbone(net, batch) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # ... and so does training mode on the calibration images, where BatchNorm uses the batch's own statistics
    net.train()
    assert np.abs(_backbone(net, batch) - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())


def test_pt_backbone_is_copied_and_the_head_starts_fresh(tmp_path: Path, ultralytics_env: None, dataset: Path) -> None:
    import torch

    from trainer.backbone import import_backbone, pick_calibration_images

    det = _detector(seed=1)
    torch.save({"model": det, "ema": None}, tmp_path / "det.pt")
    report = import_backbone(tmp_path / "det.pt", tmp_path / "start.pt", pick_calibration_images(dataset, 8),
                             InputSpec(size=SIZE, resize="stretch"))
    assert report.convolutions == 25 and report.calibration_images == 0 and report.max_abs_diff <= 1e-5
    net = torch.load(tmp_path / "start.pt", weights_only=False)["model"]
    src, got = det.state_dict(), net.state_dict()
    backbone_keys = [k for k in got if int(k.split(".")[1]) < 9 and not k.endswith("running_var")]
    assert backbone_keys and all(torch.equal(got[k], src[k]) for k in backbone_keys)
    assert type(net.model[9]).__name__ == "Classify"


def test_the_bundled_model_is_taken_over_whole_for_its_own_classes(tmp_path: Path, ultralytics_env: None,
                                                                   dataset: Path) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    from engine import load_classifier
    from trainer.backbone import dataset_classes, import_backbone, pick_calibration_images
    from trainer.ensemble import is_ensemble, member_model

    bundled = REPO / "models" / "blurflag.onnx"
    classes = dataset_classes(dataset)
    assert classes == tuple(json.loads((REPO / "models" / "class_names.json").read_text()))
    spec = InputSpec(size=SIZE, resize="stretch")
    images = pick_calibration_images(dataset, 32)
    report = import_backbone(bundled, tmp_path / "start.pt", images, spec, classes)
    assert report.head and report.calibration_images == len(images)
    net = torch.load(tmp_path / "start.pt", weights_only=False)["model"].eval()
    batch = np.stack([load_model_input(p, spec) for p in images])
    with torch.no_grad():
        out = net(torch.from_numpy(batch))
    probs = (out[0] if isinstance(out, tuple) else out).numpy()
    proto = onnx.load(str(bundled))
    if is_ensemble(proto):  # the bundled ensemble: its first YOLOv8n member is taken over (not a MobileNetV2 one)
        first = next(m for m in (member_model(proto, i) for i in range(len(proto.graph.output) + 8))
                     if any(i.name == "model.0.conv.weight" for i in m.graph.initializer))
        session = ort.InferenceSession(first.SerializeToString(), providers=["CPUExecutionProvider"])
        reference = session.run(None, {session.get_inputs()[0].name: batch})[0]
    else:
        reference = load_classifier(REPO / "models").predict(batch)
    assert np.abs(probs - reference).max() <= 1e-4
    # other classes: only the backbone is taken over
    other = import_backbone(bundled, tmp_path / "start2.pt", images, spec, ("cat", "dog"))
    assert not other.head


def test_a_backbone_of_another_width_is_refused(tmp_path: Path, ultralytics_env: None, dataset: Path) -> None:
    import torch

    from trainer.backbone import import_backbone, pick_calibration_images

    torch.save({"model": _detector(cfg="yolov8s.yaml")}, tmp_path / "det_s.pt")
    with pytest.raises(ValueError, match="not a YOLOv8n model"):
        import_backbone(tmp_path / "det_s.pt", tmp_path / "start.pt", pick_calibration_images(dataset, 4),
                        InputSpec(size=SIZE, resize="stretch"))
    assert not (tmp_path / "start.pt").exists()


def test_a_detector_given_as_weights_starts_training_from_its_backbone(tmp_path: Path, ultralytics_env: None,
                                                                       dataset: Path) -> None:
    import torch

    from trainer.train import TrainConfig, train_model

    det = _detector(seed=2)
    torch.save({"model": det}, tmp_path / "det.pt")
    best = train_model(dataset, tmp_path / "work", TrainConfig(epochs=1, batch=8, threads=1), weights=tmp_path / "det.pt")
    start = torch.load(tmp_path / "work" / "backbone.pt", weights_only=False)["model"]
    assert torch.equal(start.model[0].conv.weight, det.model[0].conv.weight)
    trained = torch.load(best, weights_only=False)
    model = trained["ema"] if trained.get("ema") is not None else trained["model"]
    assert model.model[9].linear.out_features == 4
