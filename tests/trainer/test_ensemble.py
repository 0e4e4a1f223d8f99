"""`blurflag-train ensemble`: several exported models merged into one ONNX graph the engine runs unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.model import EngineConfig, load_classifier
from engine.preprocess import load_model_input
from tests.toydata import scene

onnx = pytest.importorskip("onnx", reason="needs the train extra (onnx)")
from onnx import numpy_helper

from trainer.cli import main
from trainer.ensemble import (
    ENSEMBLE_METADATA_KEY,
    PRIOR_METADATA_KEY,
    build_ensemble,
    combine_probabilities,
    is_ensemble,
    member_model,
)

MODELS = Path(__file__).resolve().parents[2] / "models"


def _member(tmp_path: Path, name: str, bias: list[float] | None = None, **meta: str) -> Path:
    """A copy of (one network of) the bundled model, its last layer's bias shifted (so members disagree) and metadata overridden."""
    out = tmp_path / name
    out.mkdir()
    shutil.copy2(MODELS / "class_names.json", out / "class_names.json")
    proto = onnx.load(str(MODELS / "blurflag.onnx"))
    if is_ensemble(proto):  # the bundled model is itself an ensemble: its YOLOv8n-cls network (its head is shifted below)
        proto = next(m for m in (member_model(proto, i) for i in range(8))
                     if any(i.name == "model.9.linear.bias" for i in m.graph.initializer))
    if bias is not None:
        for init in proto.graph.initializer:
            if init.name == "model.9.linear.bias":
                shifted = numpy_helper.to_array(init) + np.asarray(bias, dtype=np.float32)
                init.CopyFrom(numpy_helper.from_array(shifted.astype(np.float32), init.name))
    for p in proto.metadata_props:
        if p.key in meta:
            p.value = meta[p.key]
    onnx.save(proto, str(out / "blurflag.onnx"))
    return out


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("members")
    return [_member(tmp, "a"), _member(tmp, "b", bias=[3.0, -1.0, 2.0, -4.0])]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(4):
        p = tmp / f"p{i}.png"
        scene(i, (300, 200)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("combine", ["mean", "geomean"])
def test_ensemble_gives_the_members_combined_probabilities(members, photos, tmp_path: Path, combine: str) -> None:
    report = build_ensemble(members, tmp_path / "ens", combine, photos)
    assert report.members == 2 and report.images_checked == 4 and report.max_abs_diff <= 1e-5

    ens = load_classifier(tmp_path / "ens")
    one = load_classifier(members[0])
    two = load_classifier(members[1])
    assert ens.names == one.names and ens.spec == one.spec  # the engine reads the same input pipeline
    batch = np.stack([load_model_input(p, ens.spec) for p in photos])
    p1, p2, pe = one.predict(batch), two.predict(batch), ens.predict(batch)
    assert np.abs(p1 - p2).max() > 0.05  # the members really disagree, so the check below means something
    if combine == "mean":
        expected = (p1 + p2) / 2
    else:
        g = np.sqrt(p1 * p2)
        expected = g / g.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(pe, expected, atol=1e-5)
    np.testing.assert_allclose(combine_probabilities([p1, p2], combine), expected, atol=1e-9)
    np.testing.assert_allclose(pe.sum(axis=1), 1.0, atol=1e-5)

    meta = json.loads(ens.info.metadata[ENSEMBLE_METADATA_KEY])
    assert meta["combine"] == combine and len(meta["members"]) == 2
    assert all(len(m["sha256"]) == 64 for m in meta["members"])
    # a full classification through the engine's public path, as the app makes it (the whole frame only: the
    # quadrant check on top is engine.tiles', tested in tests/engine/test_tiles.py)
    result = load_classifier(tmp_path / "ens", EngineConfig(tile_check=None)).classify(photos[0], "motion_blurred")
    assert result.ok and result.blur_type_probability == pytest.approx(pe[0][ens.names.index("motion_blurred")],
                                                                       abs=1e-5)


@pytest.mark.parametrize("key, value", [("blurflag_reducing_gap", "none"), ("blurflag_resize", "center_crop")])
def test_members_that_disagree_on_the_input_pipeline_are_refused(members, tmp_path: Path, key: str,
                                                                 value: str) -> None:
    odd = _member(tmp_path, "odd", **{key: value})
    with pytest.raises(ValueError, match=key):
        build_ensemble([members[0], odd], tmp_path / "ens")
    assert not (tmp_path / "ens" / "blurflag.onnx").exists()


def test_bad_requests_fail_clearly_and_touch_no_member(members, tmp_path: Path) -> None:
    before = [(m / "blurflag.onnx").read_bytes() for m in members]
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble(members[:1], tmp_path / "one")
    with pytest.raises(ValueError, match="holds a member"):
        build_ensemble(members, members[1])
    with pytest.raises(FileNotFoundError):
        build_ensemble([members[0], tmp_path / "nothing"], tmp_path / "ens")
    with pytest.raises(ValueError, match="combine"):
        build_ensemble(members, tmp_path / "ens", "median")
    build_ensemble(members, tmp_path / "ens")
    with pytest.raises(ValueError, match="an ensemble already"):
        build_ensemble([members[0], tmp_path / "ens"], tmp_path / "nested")
    logits = onnx.load(str(members[1] / "blurflag.onnx"))  # a network without its final Softmax
    softmax = next(n for n in logits.graph.node if n.op_type == "Softmax")
    for n in logits.graph.node:
        for i, name in enumerate(n.output):
            if name == softmax.input[0]:
                n.output[i] = logits.graph.output[0].name
    logits.graph.node.remove(softmax)
    (tmp_path / "logits").mkdir()
    onnx.save(logits, str(tmp_path / "logits" / "blurflag.onnx"))
    shutil.copy2(members[1] / "class_names.json", tmp_path / "logits")
    with pytest.raises(ValueError, match="not a Softmax"):
        build_ensemble([members[0], tmp_path / "logits"], tmp_path / "ens2")
    assert [(m / "blurflag.onnx").read_bytes() for m in members] == before


def test_cli_writes_a_model_the_engine_loads(members, photos, tmp_path: Path, capsys) -> None:
    assert main(["ensemble", str(tmp_path / "ens"), str(members[0]), str(members[1] / "blurflag.onnx")]) == 0
    assert "2 members" in capsys.readouterr().out
    assert load_classifier(tmp_path / "ens").classify(photos[1]).ok
    assert main(["ensemble", str(tmp_path / "bad"), str(members[0]), str(tmp_path / "missing")]) == 1
    assert "no model at" in capsys.readouterr().err


@pytest.mark.parametrize("combine", ["mean", "geomean"])
def test_each_member_can_be_taken_back_out(members, photos, tmp_path: Path, combine: str) -> None:
    import onnxruntime as ort

    build_ensemble(members, tmp_path / "ens", combine)
    proto = onnx.load(str(tmp_path / "ens" / "blurflag.onnx"))
    assert is_ensemble(proto) and not is_ensemble(onnx.load(str(members[0] / "blurflag.onnx")))
    spec = load_classifier(members[0]).spec
    batch = np.stack([load_model_input(p, spec) for p in photos])
    for i, m in enumerate(members):
        alone = member_model(proto, i)
        onnx.checker.check_model(alone)
        out = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
            "images": batch})[0]
        np.testing.assert_allclose(out, load_classifier(m).predict(batch), atol=1e-6)
    with pytest.raises(ValueError, match="member 2"):
        member_model(proto, 2)


@pytest.mark.parametrize("combine", ["mean", "geomean"])
def test_a_prior_on_sharp_reweights_the_combined_probabilities(members, photos, tmp_path: Path, combine: str) -> None:
    import onnxruntime as ort

    plain = build_ensemble(members, tmp_path / "plain", combine, photos, half=True)
    report = build_ensemble(members, tmp_path / "prior", combine, photos, half=True, prior={"sharp": 2.5})
    assert report.max_abs_diff <= 0.05 and plain.max_abs_diff <= 0.05  # parity checked against the reweighted mean
    ens, base = load_classifier(tmp_path / "prior"), load_classifier(tmp_path / "plain")
    batch = np.stack([load_model_input(p, ens.spec) for p in photos])
    p, q = base.predict(batch), ens.predict(batch)
    w = np.where(np.array(ens.names) == "sharp", 2.5, 1.0)
    np.testing.assert_allclose(q, p * w / (p * w).sum(axis=1, keepdims=True), atol=1e-5)
    k = ens.names.index("sharp")
    assert np.all(q[:, k] > p[:, k])  # every image leans towards sharp, and the rest keep their proportions
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
    assert json.loads(ens.info.metadata[PRIOR_METADATA_KEY]) == {
        n: (2.5 if n == "sharp" else 1.0) for n in ens.names}
    assert PRIOR_METADATA_KEY not in base.info.metadata
    # the members come back out unchanged, and a prior of 1 adds no node
    proto = onnx.load(str(tmp_path / "prior" / "blurflag.onnx"))
    out = ort.InferenceSession(member_model(proto, 1).SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    np.testing.assert_allclose(out, load_classifier(members[1]).predict(batch), atol=2e-3)  # float16 storage
    build_ensemble(members, tmp_path / "one", combine, half=True, prior={"sharp": 1.0})
    assert len(onnx.load(str(tmp_path / "one" / "blurflag.onnx")).graph.node) == len(
        onnx.load(str(tmp_path / "plain" / "blurflag.onnx")).graph.node)


def test_bad_priors_are_refused_before_anything_is_written(members, tmp_path: Path, capsys) -> None:
    for prior, match in (({"blurry": 2.0}, "does not have"), ({"sharp": 0.0}, "positive"),
                         ({"sharp": float("nan")}, "positive")):
        with pytest.raises(ValueError, match=match):
            build_ensemble(members, tmp_path / "ens", prior=prior)
        assert not (tmp_path / "ens" / "blurflag.onnx").exists()
    assert main(["ensemble", str(tmp_path / "ens"), str(members[0]), str(members[1]), "--prior", "sharp"]) == 1
    assert "CLASS=WEIGHT" in capsys.readouterr().err
    assert main(["ensemble", str(tmp_path / "ens"), str(members[0]), str(members[1]), "--prior", "sharp=2"]) == 0
    assert json.loads(load_classifier(tmp_path / "ens").info.metadata[PRIOR_METADATA_KEY])["sharp"] == 2.0


def _at_size(member: Path, out: Path, size: int) -> Path:
    """A copy of a member exported for another input size (YOLOv8n-cls pools globally, so it runs at any size)."""
    out.mkdir()
    shutil.copy2(member / "class_names.json", out / "class_names.json")
    proto = onnx.load(str(member / "blurflag.onnx"))
    for axis in (2, 3):
        proto.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = size
    del proto.graph.value_info[:]
    for p in proto.metadata_props:
        if p.key == "imgsz":
            p.value = str([size, size])
    onnx.save(proto, str(out / "blurflag.onnx"))
    return out


def test_members_of_different_input_sizes_share_the_largest(members, photos, tmp_path: Path, capsys) -> None:
    """A 224-px member beside a 320-px one: the graph takes 320 px and resizes inside for the smaller member; parity
    is exact against that resize, and the difference from feeding the member its own input is reported."""
    import onnxruntime as ort

    from trainer.ensemble import resize_batch

    big = _at_size(members[1], tmp_path / "big", 320)
    report = build_ensemble([big, members[0]], tmp_path / "ens", "mean", photos)
    assert report.max_abs_diff <= 1e-5 and report.resample_max_abs_diff > 0
    ens = load_classifier(tmp_path / "ens")
    assert ens.spec.size == 320
    batch = np.stack([load_model_input(p, ens.spec) for p in photos])
    small = resize_batch(batch, 224)
    assert small.shape == (len(photos), 3, 224, 224)
    expected = (load_classifier(big).predict(batch) + load_classifier(members[0]).predict(small)) / 2
    np.testing.assert_allclose(ens.predict(batch), expected, atol=1e-5)
    # the smaller member comes back out at its own size, and runs as it did alone
    proto = onnx.load(str(tmp_path / "ens" / "blurflag.onnx"))
    alone = member_model(proto, 1)
    def dims(model: onnx.ModelProto) -> list[object]:
        return [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]

    assert dims(alone)[2:] == [224, 224]  # the graph's static input, at the member's own size
    # in a graph of dynamic input size (the bundled model: 448 px, its textured network 224) it stays dynamic, as
    # members are exported, so a retraining from it may choose its size
    bundled = member_model(onnx.load(str(MODELS / "blurflag.onnx")), 1)
    assert dims(bundled)[2:] == ["height", "width"] and \
        {p.key: p.value for p in bundled.metadata_props}["imgsz"] == "[224, 224]"
    assert {p.key: p.value for p in alone.metadata_props}["imgsz"] == "[224, 224]"
    own = np.stack([load_model_input(p, load_classifier(members[0]).spec) for p in photos])
    out = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
        "images": own})[0]
    np.testing.assert_allclose(out, load_classifier(members[0]).predict(own), atol=1e-6)
    assert {p.key: p.value for p in member_model(proto, 0).metadata_props}["imgsz"] == "[320, 320]"
    assert main(["ensemble", str(tmp_path / "cli"), str(big), str(members[0])]) == 0
    assert "2 members" in capsys.readouterr().out
    odd = _member(tmp_path, "odd", imgsz="[224, 160]")
    with pytest.raises(ValueError, match="square"):
        build_ensemble([members[0], odd], tmp_path / "ens2")


def _with_meta(member: Path, **meta: str) -> Path:
    """The member with metadata keys added or replaced (in place)."""
    proto = onnx.load(str(member / "blurflag.onnx"))
    for p in [p for p in proto.metadata_props if p.key in meta]:
        proto.metadata_props.remove(p)
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(member / "blurflag.onnx"))
    return member


def test_the_draft_factors_the_largest_members_ask_for_are_the_graphs(members, tmp_path: Path) -> None:
    """Members that ask for their own JPEG draft factors (a fine-stem MobileNetV2: trainer.imagenet) pass them to the
    merged graph when theirs is its input size; the engine decodes by them; a member resized inside does not bring
    them along when it is taken back out; members of the graph's size that disagree are refused."""
    from engine.model import DRAFT_METADATA_KEY, ORIGINAL_DRAFT_METADATA_KEY

    asks = {DRAFT_METADATA_KEY: "1.5", ORIGINAL_DRAFT_METADATA_KEY: "1.0"}
    big = _with_meta(_at_size(members[1], tmp_path / "big", 320), **asks)
    assert (load_classifier(big).spec.draft_factor, load_classifier(big).spec.original_draft_factor) == (1.5, 1.0)
    build_ensemble([big, members[0]], tmp_path / "ens")
    ens = load_classifier(tmp_path / "ens")
    assert (ens.spec.draft_factor, ens.spec.original_draft_factor) == (1.5, 1.0)
    assert load_classifier(tmp_path / "ens", EngineConfig(draft_factor=4.0)).spec.draft_factor == 4.0  # settings win
    plain = load_classifier(members[0]).spec
    assert (plain.draft_factor, plain.original_draft_factor) == (4.0, 2.0)  # InputSpec's defaults where none is asked
    proto = onnx.load(str(tmp_path / "ens" / "blurflag.onnx"))
    assert DRAFT_METADATA_KEY not in {p.key for p in member_model(proto, 1).metadata_props}
    assert {p.key: p.value for p in member_model(proto, 0).metadata_props}[DRAFT_METADATA_KEY] == "1.5"
    # a plain member beside the asking one at the graph's size (ask-less: the defaults) is a disagreement
    same = _at_size(members[0], tmp_path / "same", 320)
    with pytest.raises(ValueError, match=DRAFT_METADATA_KEY):
        build_ensemble([big, same], tmp_path / "ens2")
    from engine.errors import ModelLoadError

    for i, text in enumerate(("half", "-1", "inf", "nan")):
        bad = _with_meta(_at_size(members[0], tmp_path / f"bad{i}", 224), **{ORIGINAL_DRAFT_METADATA_KEY: text})
        with pytest.raises(ModelLoadError, match=ORIGINAL_DRAFT_METADATA_KEY):
            load_classifier(bad)
