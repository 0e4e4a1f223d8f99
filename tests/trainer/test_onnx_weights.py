"""Float16-stored weights (trainer.onnx_weights): half the file, the same function up to float16 rounding, and an
ensemble's networks given back as float32, under their own names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.model import load_classifier
from engine.preprocess import load_model_input
from tests.toydata import scene

onnx = pytest.importorskip("onnx", reason="needs the train extra (onnx)")
from onnx import TensorProto, helper, numpy_helper

from trainer.cli import main
from trainer.ensemble import ENSEMBLE_METADATA_KEY, build_ensemble, is_ensemble, member_model
from trainer.onnx_weights import HALF_SUFFIX, MIN_HALF_ELEMENTS, STORAGE_METADATA_KEY, store_float32, store_half

MODELS = Path(__file__).resolve().parents[2] / "models"


def _tiny(weight: np.ndarray) -> onnx.ModelProto:
    """x (1 x 4) -> Softmax(x @ W + b): a 4-class network with one weight matrix, a bias and a scalar scale."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"),
             numpy_helper.from_array(np.arange(weight.shape[1], dtype=np.float32) / 10, "b"),
             numpy_helper.from_array(np.array(0.5, dtype=np.float32), "s")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Mul", ["z", "s"], ["zs"]), helper.make_node("Softmax", ["zs"], ["y"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_weights_are_stored_as_float16_and_come_back_as_float32() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 8)).astype(np.float32)
    model = _tiny(w)
    half = store_half(model)
    stored = {i.name: i for i in half.graph.initializer}
    # the matrix is stored as float16; the 8-element bias and the scalar are too small to bother (float32 kept)
    assert MIN_HALF_ELEMENTS > 8
    assert stored["w" + HALF_SUFFIX].data_type == TensorProto.FLOAT16 and "w" not in stored
    assert stored["b"].data_type == TensorProto.FLOAT and stored["s"].data_type == TensorProto.FLOAT
    assert {p.key: p.value for p in half.metadata_props}[STORAGE_METADATA_KEY] == "float16"
    assert store_half(half).SerializeToString() == half.SerializeToString()  # stored so already: nothing to do
    # the same function up to the weights' rounding; the original is not touched
    x = rng.normal(size=(1, 4)).astype(np.float32)
    assert 0 < np.abs(_run(half, x) - _run(model, x)).max() < 1e-3
    assert [i.name for i in model.graph.initializer] == ["w", "b", "s"]
    # back as float32: the exported layout (names, nodes, metadata), with the rounded weights
    back = store_float32(half)
    onnx.checker.check_model(back)
    assert [i.name for i in back.graph.initializer] == ["w", "b", "s"]
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in model.graph.node]
    assert STORAGE_METADATA_KEY not in {p.key for p in back.metadata_props}
    arrays = {i.name: numpy_helper.to_array(i) for i in back.graph.initializer}
    assert arrays["w"].dtype == np.float32
    np.testing.assert_array_equal(arrays["w"], w.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(_run(back, x), _run(half, x))
    assert store_float32(model).SerializeToString() == model.SerializeToString()


def test_a_weight_beyond_float16s_range_stays_float32() -> None:
    w = np.full((4, 8), 1e5, dtype=np.float32)  # float16 tops out at 65504
    half = store_half(_tiny(w))
    assert next(i for i in half.graph.initializer if i.name == "w").data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(_run(half, np.ones((1, 4), np.float32)), _run(_tiny(w), np.ones((1, 4), np.float32)))


def test_a_half_stored_ensemble_is_half_the_file_and_keeps_what_it_says(tmp_path: Path) -> None:
    """Two members of the bundled model merged again with `--half`: about half the bytes of the float32 merge,
    probabilities within float16 rounding, its own description, and each member taken back out still runs."""
    import onnxruntime as ort

    bundled = onnx.load(str(MODELS / "blurflag.onnx"))
    assert is_ensemble(bundled)
    for i in (0, 1):  # the bundled model's first two networks, as model folders
        (tmp_path / f"m{i}").mkdir()
        onnx.save(member_model(bundled, i), str(tmp_path / f"m{i}" / "blurflag.onnx"))
        (tmp_path / f"m{i}" / "class_names.json").write_text((MODELS / "class_names.json").read_text())
    photos = []
    for i in range(3):
        photos.append(tmp_path / f"p{i}.png")
        scene(i, (300, 200)).save(photos[-1])
    members = [tmp_path / "m0", tmp_path / "m1"]
    build_ensemble(members, tmp_path / "full", parity_images=photos)
    assert main(["ensemble", str(tmp_path / "half"), *map(str, members), "--half"]) == 0
    full_size = (tmp_path / "full" / "blurflag.onnx").stat().st_size
    half_size = (tmp_path / "half" / "blurflag.onnx").stat().st_size
    assert half_size < 0.55 * full_size
    full, half = load_classifier(tmp_path / "full"), load_classifier(tmp_path / "half")
    assert half.names == full.names and half.spec == full.spec
    batch = np.stack([load_model_input(p, full.spec) for p in photos])
    assert np.abs(half.predict(batch) - full.predict(batch)).max() < 0.02
    meta = half.info.metadata
    assert meta[STORAGE_METADATA_KEY] == "float16" and STORAGE_METADATA_KEY not in full.info.metadata
    assert meta["description"].startswith("BlurFlag: 2 networks averaged")
    networks = ["mobilenetv2" if any(t.name == "net.fc.weight" for t in member_model(bundled, i).graph.initializer)
                else "YOLOv8n-cls" for i in (0, 1)]  # by structure: MobileNetV2 keeps its head's PyTorch name
    assert meta["blurflag_architecture"] == "ensemble of " + ", ".join(networks)
    assert [m["architecture"] for m in json.loads(meta[ENSEMBLE_METADATA_KEY])["members"]] == networks
    proto = onnx.load(str(tmp_path / "half" / "blurflag.onnx"))
    for i, m in enumerate(members):
        alone = member_model(proto, i)
        onnx.checker.check_model(alone)
        out = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"images": batch})[0]
        assert np.abs(out - load_classifier(m).predict(batch)).max() < 0.02
        own = {p.key: p.value for p in alone.metadata_props}
        assert own["blurflag_architecture"] == networks[i] and ENSEMBLE_METADATA_KEY not in own
        assert STORAGE_METADATA_KEY not in own  # given back as float32, as exported
        assert all(t.data_type != TensorProto.FLOAT16 for t in alone.graph.initializer)
