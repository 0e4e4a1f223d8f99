"""Model folder loading and classification semantics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import InvalidBlurTypeError, ModelLoadError, load_classifier
from engine.model import PRODUCT_CLASSES
from engine.paths import default_model_dir
from tests.toydata import scene


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    p = tmp_path / "photo.jpg"
    scene(1, (300, 200)).save(p, quality=92)
    return p


def test_bundled_model_loads_with_class_order_from_files(classifier) -> None:
    names = json.loads((default_model_dir() / "class_names.json").read_text())
    assert classifier.names == tuple(names)
    assert set(classifier.names) == PRODUCT_CLASSES
    assert set(classifier.blur_types) == PRODUCT_CLASSES - {"sharp"}


def test_full_classification_has_four_probabilities(classifier, photo: Path) -> None:
    r = classifier.classify(photo)
    assert r.ok and r.error is None
    assert set(r.probabilities) == PRODUCT_CLASSES
    assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert r.top_class == max(r.probabilities, key=r.probabilities.get)
    assert r.confidence == r.probabilities[r.top_class]
    assert r.detected is None and r.blur_type_probability is None
    assert set(r.to_dict()) == {"path", "top_class", "confidence", "probabilities"}


@pytest.mark.parametrize("blur_type", ["defocused_object_portrait", "defocused_blurred", "motion_blurred"])
def test_detection_semantics(classifier, photo: Path, blur_type: str) -> None:
    r = classifier.classify(photo, blur_type)
    assert r.detected == (r.top_class == blur_type)
    assert r.confidence == pytest.approx(max(r.probabilities.values()))
    assert r.blur_type_probability == r.probabilities[blur_type]
    d = r.to_dict()
    assert d["blur_type"] == blur_type and d["detected"] == r.detected
    assert d["blur_type_probability"] == pytest.approx(r.probabilities[blur_type], abs=1e-6)


@pytest.mark.parametrize("bad", ["sharp", "gaussian", ""])
def test_invalid_blur_type_lists_valid_types(classifier, photo: Path, bad: str) -> None:
    with pytest.raises(InvalidBlurTypeError) as exc:
        classifier.classify(photo, bad)
    for t in ("defocused_object_portrait", "defocused_blurred", "motion_blurred"):
        assert t in str(exc.value)


def _copy_model(tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(default_model_dir(), dest, ignore=shutil.ignore_patterns("*.md", "*.json.bak"))
    return dest


def test_missing_class_names_is_a_model_load_error(tmp_path: Path) -> None:
    d = _copy_model(tmp_path)
    (d / "class_names.json").unlink()
    with pytest.raises(ModelLoadError, match="class_names.json"):
        load_classifier(d)


def test_reordered_class_names_disagree_with_onnx_metadata(tmp_path: Path) -> None:
    d = _copy_model(tmp_path)
    names = json.loads((d / "class_names.json").read_text())
    (d / "class_names.json").write_text(json.dumps(list(reversed(names))))
    with pytest.raises(ModelLoadError, match="disagrees"):
        load_classifier(d)


@pytest.mark.parametrize("names", [["sharp", "blurry", "motion_blurred", "defocused_blurred"], ["sharp"], {"a": 1}])
def test_wrong_class_sets_are_rejected(tmp_path: Path, names) -> None:
    d = _copy_model(tmp_path)
    (d / "class_names.json").write_text(json.dumps(names))
    with pytest.raises(ModelLoadError):
        load_classifier(d)


def test_broken_onnx_and_missing_folder(tmp_path: Path) -> None:
    d = _copy_model(tmp_path)
    (d / "blurflag.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_classifier(d)
    with pytest.raises(ModelLoadError, match="not found"):
        load_classifier(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="exactly one"):
        load_classifier(empty)


def test_one_session_shared_by_threads_gives_identical_results(classifier, tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        p = tmp_path / f"t{i}.jpg"
        scene(i, (240, 160)).save(p)
        paths.append(p)
    expected = {str(p): classifier.classify(p).probabilities for p in paths}
    got: dict[str, dict[str, float]] = {}
    errors: list[BaseException] = []

    def work(ps: list[Path]) -> None:
        try:
            for _ in range(3):
                for p in ps:
                    got[str(p)] = classifier.classify(p).probabilities
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(paths[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-6)


def test_batch_pipeline_keeps_order_and_reports_bad_files(classifier, tmp_path: Path) -> None:
    paths: list[Path] = []
    for i in range(11):
        p = tmp_path / f"b{i:02d}.jpg"
        if i == 4:
            p.write_bytes(b"")
        elif i == 7:
            p.write_text("hello")
        else:
            scene(i).save(p)
        paths.append(p)
    results = list(classifier.classify_paths(paths, blur_type="motion_blurred", batch_size=4))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.ok for r in results] == [i not in (4, 7) for i in range(11)]
    single = classifier.classify(paths[0], "motion_blurred")
    assert results[0].probabilities == pytest.approx(single.probabilities, abs=1e-5)


def test_classify_image_in_memory_matches_file_when_lossless(classifier, tmp_path: Path) -> None:
    img = scene(3, (224, 224))
    p = tmp_path / "x.png"
    img.save(p)
    a = classifier.classify_image(img).probabilities
    b = classifier.classify(p).probabilities
    assert a == pytest.approx(b, abs=1e-6)
    assert np.isclose(sum(a.values()), 1.0)


def test_engine_imports_no_qt_or_torch() -> None:
    code = (
        "import sys, engine, engine.cli, engine.model, engine.pipeline, engine.preprocess, trainer, trainer.dataset;"
        "bad = [m for m in ('PySide6', 'torch', 'ultralytics', 'cv2') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_result_from_memory(classifier) -> None:
    r = classifier.classify_image(Image.new("RGB", (50, 80), (120, 130, 140)), "defocused_blurred", path="mem")
    assert r.path == "mem" and r.ok


@pytest.mark.parametrize(("text", "gap"), [(None, None), ("none", None), ("3.0", 3.0), ("2", 2.0)])
def test_reducing_gap_comes_from_the_onnx_metadata(text, gap) -> None:
    from engine.model import REDUCING_GAP_METADATA_KEY, _reducing_gap

    meta = {} if text is None else {REDUCING_GAP_METADATA_KEY: text}
    assert _reducing_gap(meta) == gap


@pytest.mark.parametrize("text", ["three", "0.5", "nan"])
def test_bad_reducing_gap_metadata_is_a_model_load_error(text) -> None:
    from engine.model import REDUCING_GAP_METADATA_KEY, _reducing_gap

    with pytest.raises(ModelLoadError, match=REDUCING_GAP_METADATA_KEY):
        _reducing_gap({REDUCING_GAP_METADATA_KEY: text})
