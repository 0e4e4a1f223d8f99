"""`blurflag-train imagenet`: the committed ImageNet MobileNetV2 start loads, a fine-tuning resumes from its last
epoch, and the export is a model the engine runs, with the same probabilities as PyTorch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine.preprocess import InputSpec
from tests.toydata import write_class_folders
from trainer.dataset import PrepareOptions, prepare

HAS_TORCH = __import__("importlib").util.find_spec("torch") is not None
pytestmark = [pytest.mark.skipif(not HAS_TORCH, reason="needs the train extra (CI installs it)"), pytest.mark.slow]
README = Path(__file__).resolve().parents[2] / "trainer" / "weights" / "README.md"


def test_the_committed_start_is_the_documented_file_and_loads() -> None:
    import torch

    from trainer.imagenet import DEFAULT_WEIGHTS, build_network, load_start

    digest = hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert digest in README.read_text(encoding="utf-8")
    net = build_network(4)
    before = net.fc.weight.detach().clone()
    load_start(net, DEFAULT_WEIGHTS)
    state = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert torch.equal(net.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(net.fc.weight, before)  # the head stays new


def test_a_state_dict_of_another_network_is_refused(tmp_path: Path) -> None:
    import torch

    from trainer.imagenet import build_network, load_start

    bad = tmp_path / "other.pt"
    torch.save({"features.0.0.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="not a MobileNetV2"):
        load_start(build_network(4), bad)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    src = write_class_folders(root / "src", per_class=6)
    ds = root / "ds"
    prepare(src, ds, PrepareOptions(spec=InputSpec(size=64, resize="stretch"), workers=1, balance=False))
    return ds


def test_finetuning_resumes_after_an_interruption_and_exports_an_engine_model(dataset: Path, tmp_path: Path) -> None:
    from engine.model import load_classifier
    from trainer.cli import main

    work, out = tmp_path / "work", tmp_path / "model"
    (dataset / "train" / "sharp" / "broken.png").write_bytes(b"not a png")  # skipped with a message
    try:
        n_train = len([p for p in (dataset / "train").glob("*/*")]) - 1
        steps = n_train // 4
        # the first run ends after one epoch, as if interrupted; the second resumes at epoch 2
        assert main(["imagenet", str(out), "--dataset", str(dataset), "--val-dataset", str(dataset), "--work",
                     str(work), "--epochs", "2", "--batch", "4", "--threads", "1", "--max-steps", str(steps)]) == 0
        first = json.loads((work / "results.json").read_text(encoding="utf-8"))
        assert [h["epoch"] for h in first["history"]] == [1]
        (work / "results.json").unlink()
        import shutil

        shutil.rmtree(out)
        assert main(["imagenet", str(out), "--dataset", str(dataset), "--val-dataset", str(dataset), "--work",
                     str(work), "--epochs", "2", "--batch", "4", "--threads", "1"]) == 0
    finally:
        (dataset / "train" / "sharp" / "broken.png").unlink()
    done = json.loads((work / "results.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in done["history"]] == [1, 2]
    assert done["history"][0] == first["history"][0]  # the resumed run kept the first epoch's record
    classifier = load_classifier(out)
    assert classifier.names == ("defocused_blurred", "defocused_object_portrait", "motion_blurred", "sharp")
    assert classifier.spec.size == 224 and classifier.spec.resize == "stretch"
    image = next((dataset / "val").glob("*/*"))
    result = classifier.classify(image)
    assert result.error is None and result.classification is not None
    probs = np.array(list(result.classification.probabilities.values()))
    assert probs.shape == (4,) and abs(probs.sum() - 1) < 1e-4
    # any input size runs (a retraining at another imgsz calibrates through the bundled graph at that size)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "blurflag.onnx"), providers=["CPUExecutionProvider"])
    small = session.run(None, {"images": np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)})[0]
    assert small.shape == (2, 4) and np.allclose(small.sum(1), 1, atol=1e-4)


def test_a_checkpoint_of_other_settings_is_not_resumed(dataset: Path, tmp_path: Path) -> None:
    from trainer.imagenet import finetune

    work = tmp_path / "work"
    finetune([dataset], dataset, work, epochs=1, batch=4, threads=1, max_steps=1, log=lambda _m: None)
    with pytest.raises(ValueError, match="another run"):
        finetune([dataset], dataset, work, epochs=1, batch=8, threads=1, log=lambda _m: None)


def test_a_yolov8n_start_is_taken_from_an_ensemble_only_where_it_has_one(dataset: Path, tmp_path: Path,
                                                                        ultralytics_env: None) -> None:
    """A MobileNetV2 member is no YOLOv8n-cls start: the importer takes an ensemble's first YOLOv8n member (the
    bundled model's textured network) and refuses an ensemble of MobileNetV2 networks alone."""
    import torch

    from trainer.backbone import import_backbone, pick_calibration_images
    from trainer.ensemble import build_ensemble
    from trainer.imagenet import build_network, export

    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        torch.save(build_network(4).state_dict(), tmp_path / f"{name}.pt")
        export(tmp_path / f"{name}.pt", tmp_path / name)
    build_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    images = pick_calibration_images(dataset, 4)
    spec = InputSpec(size=224, resize="stretch")
    with pytest.raises(ValueError, match="without a YOLOv8n network"):
        import_backbone(tmp_path / "ab" / "blurflag.onnx", tmp_path / "start.pt", images, spec)
    assert not (tmp_path / "start.pt").exists()
