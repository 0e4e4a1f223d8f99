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


def test_a_run_at_another_input_size_trains_exports_and_resumes_only_at_that_size(dataset: Path,
                                                                                 tmp_path: Path) -> None:
    from engine.model import load_classifier
    from trainer.cli import main
    from trainer.imagenet import finetune

    work, out = tmp_path / "work", tmp_path / "model"
    logged: list[str] = []
    finetune([dataset], dataset, work, epochs=1, batch=4, threads=1, max_steps=1, log=logged.append, imgsz=96)
    # the toy dataset is prepared at 64 px: every image is resampled, and the log says so
    assert any("were not 96 px and were resized" in m for m in logged)
    with pytest.raises(ValueError, match="another run"):  # a 96-px checkpoint is not resumed at 224
        finetune([dataset], dataset, work, epochs=1, batch=4, threads=1, log=lambda _m: None)
    assert main(["imagenet", str(out), "--dataset", str(dataset), "--val-dataset", str(dataset), "--work",
                 str(work), "--epochs", "1", "--batch", "4", "--threads", "1", "--imgsz", "96"]) == 0
    classifier = load_classifier(out)
    assert classifier.spec.size == 96  # the engine feeds it the size it trained at
    result = classifier.classify(next((dataset / "val").glob("*/*")))
    assert result.error is None and result.classification is not None
    with pytest.raises(ValueError, match="multiple of 32"):
        finetune([dataset], dataset, tmp_path / "w2", epochs=1, imgsz=100, log=lambda _m: None)


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


BUNDLED = Path(__file__).resolve().parents[2] / "models" / "blurflag.onnx"


def _trained_looking_network(seed: int, fine_stem: bool = False) -> object:
    """A MobileNetV2 whose batch norms hold statistics and affine weights far from their initial values."""
    import torch

    from trainer.imagenet import build_network

    torch.manual_seed(seed)
    net = build_network(4, fine_stem=fine_stem)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_an_exported_mobilenetv2_comes_back_with_its_head_and_its_function(tmp_path: Path) -> None:
    """`onnx_start` undoes the export's batch-norm folding: the same probabilities in PyTorch, the same head."""
    import torch

    from trainer.imagenet import build_network, export, onnx_start

    net = _trained_looking_network(3)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    export(tmp_path / "a.pt", tmp_path / "a")
    back = build_network(4)
    back.load_state_dict(onnx_start(tmp_path / "a" / "blurflag.onnx", log=lambda _m: None))
    back.eval()
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(torch.softmax(back(x), 1), torch.softmax(net(x), 1), atol=1e-5)
    assert torch.equal(back.fc.weight, net.fc.weight) and torch.equal(back.fc.bias, net.fc.bias)


def test_a_fine_stem_starts_as_the_pretrained_network_on_the_input_reduced_2x2(tmp_path: Path) -> None:
    """The 6 x 6 stride-4 first convolution, widened from the pretrained 3 x 3 one, computes on an image what the
    pretrained network computes on its 2 x 2 box reduction; its export comes back through `onnx_start`."""
    import torch

    from trainer.imagenet import DEFAULT_WEIGHTS, build_network, export, load_start, onnx_start

    plain, fine = build_network(4), build_network(4, fine_stem=True)
    load_start(plain, DEFAULT_WEIGHTS)
    load_start(fine, DEFAULT_WEIGHTS)
    fine.fc.load_state_dict(plain.fc.state_dict())
    plain.eval()
    fine.eval()
    x = torch.rand(2, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(fine(x), plain(torch.nn.functional.avg_pool2d(x, 2)), atol=1e-4)
        assert not torch.allclose(fine(x), plain(x[:, :, ::2, ::2]), atol=1e-2)  # not a subsampling

    net = _trained_looking_network(4, fine_stem=True)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    export(tmp_path / "a.pt", tmp_path / "a", imgsz=128, fine_stem=True)
    from engine.model import load_classifier

    spec = load_classifier(tmp_path / "a").spec  # decoded for the detail its input holds (FINE_DRAFT_FACTORS)
    assert (spec.size, spec.draft_factor, spec.original_draft_factor) == (128, 1.5, 1.0)
    state = onnx_start(tmp_path / "a" / "blurflag.onnx", log=lambda _m: None)
    back = build_network(4, fine_stem=True)
    back.load_state_dict(state)
    back.eval()
    with torch.no_grad():
        assert torch.allclose(torch.softmax(back(x), 1), torch.softmax(net(x), 1), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 64"):
        export(tmp_path / "a.pt", tmp_path / "b", imgsz=96, fine_stem=True)


def test_a_fine_stem_run_continues_only_from_a_fine_stem_network(dataset: Path, tmp_path: Path) -> None:
    import torch

    from trainer.imagenet import export, finetune

    torch.save(_trained_looking_network(5).state_dict(), tmp_path / "plain.pt")
    export(tmp_path / "plain.pt", tmp_path / "plain")
    with pytest.raises(ValueError, match="lacks the fine stem"):
        finetune([dataset], dataset, tmp_path / "w", weights=tmp_path / "plain" / "blurflag.onnx", epochs=1,
                 imgsz=128, fine_stem=True, log=lambda _m: None)
    summary = finetune([dataset], dataset, tmp_path / "w2", epochs=1, batch=4, threads=1, max_steps=1,
                       imgsz=128, fine_stem=True, log=lambda _m: None)
    assert len(summary["history"]) == 1
    with pytest.raises(ValueError, match="another run"):  # its checkpoint is not resumed without the fine stem
        finetune([dataset], dataset, tmp_path / "w2", epochs=1, batch=4, threads=1, imgsz=128, log=lambda _m: None)


def test_the_bundled_models_first_mobilenetv2_is_a_start_and_a_yolov8n_model_is_not(tmp_path: Path) -> None:
    import onnx

    from trainer.ensemble import member_model
    from trainer.imagenet import is_mobilenetv2, onnx_start

    logs: list[str] = []
    state = onnx_start(BUNDLED, log=logs.append)  # raises unless the weights reproduce the member's graph
    assert "fc.weight" in state and any("member 1 of 3" in m for m in logs)
    proto = onnx.load(str(BUNDLED))
    yolo = next(member_model(proto, i) for i in range(3) if not is_mobilenetv2(member_model(proto, i)))
    onnx.save(yolo, str(tmp_path / "yolo.onnx"))
    with pytest.raises(ValueError, match="not a MobileNetV2"):
        onnx_start(tmp_path / "yolo.onnx", log=lambda _m: None)
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file at all")
    with pytest.raises(ValueError, match="not an ONNX model"):
        onnx_start(tmp_path / "broken.onnx", log=lambda _m: None)


def test_a_start_tells_the_input_size_and_stem_it_trains_with(tmp_path: Path) -> None:
    """`start_geometry`: the ImageNet weights and a plain export train at 224 px, a fine-stem export at its own size
    with the fine stem (the bundled model's MobileNetV2 networks since 2026-12-07: 448 px), also as an ensemble's first
    MobileNetV2 beside a larger member."""
    import onnx
    import torch

    from trainer.ensemble import merge_onnx
    from trainer.imagenet import DEFAULT_WEIGHTS, export, start_geometry

    assert start_geometry(None) == start_geometry(DEFAULT_WEIGHTS) == (224, False)
    assert start_geometry(BUNDLED) == (448, True)
    torch.save(_trained_looking_network(6).state_dict(), tmp_path / "plain.pt")
    export(tmp_path / "plain.pt", tmp_path / "plain")
    torch.save(_trained_looking_network(7, fine_stem=True).state_dict(), tmp_path / "fine.pt")
    export(tmp_path / "fine.pt", tmp_path / "fine", imgsz=128, fine_stem=True)
    assert start_geometry(tmp_path / "plain" / "blurflag.onnx") == (224, False)
    assert start_geometry(tmp_path / "fine.pt") == (448, True)
    assert start_geometry(tmp_path / "fine" / "blurflag.onnx") == (128, True)
    merged = merge_onnx([tmp_path / "fine" / "blurflag.onnx", tmp_path / "plain" / "blurflag.onnx"])
    onnx.save(merged, str(tmp_path / "both.onnx"))  # a 224-px graph: its fine member is resized to 128 inside
    assert start_geometry(tmp_path / "both.onnx") == (128, True)


def test_run_continues_a_fine_stem_network_at_its_own_size(tmp_path: Path) -> None:
    """`blurflag-train run --network mobilenetv2 --weights` a fine-stem export (as the trainer tab sends it, without
    --imgsz): prepared, trained and exported at the start's size with its stem; another size is refused."""
    import subprocess
    import sys

    import torch

    from engine.model import load_classifier
    from trainer.imagenet import export, is_fine, onnx_start

    repo = Path(__file__).resolve().parents[2]
    torch.save(_trained_looking_network(8, fine_stem=True).state_dict(), tmp_path / "fine.pt")
    export(tmp_path / "fine.pt", tmp_path / "start", imgsz=128, fine_stem=True)
    src = write_class_folders(tmp_path / "src", per_class=6)
    base = [sys.executable, "-m", "trainer.cli", "run", str(src), "--work", str(tmp_path / "w"), "--model-out",
            str(tmp_path / "m"), "--batch", "8", "--workers", "1", "--threads", "1", "--network", "mobilenetv2",
            "--weights", str(tmp_path / "start" / "blurflag.onnx"), "--epochs", "1"]
    refused = subprocess.run([*base, "--imgsz", "224"], capture_output=True, text=True, cwd=repo, timeout=300,
                             check=False)
    assert refused.returncode == 1 and "trains at --imgsz 128" in refused.stdout + refused.stderr
    assert not (tmp_path / "w").exists()
    proc = subprocess.run(base, capture_output=True, text=True, cwd=repo, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "128 px with a fine stem" in proc.stdout
    assert json.loads((tmp_path / "w" / "dataset" / "dataset.json").read_text())["imgsz"] == 128
    spec = load_classifier(tmp_path / "m").spec
    assert (spec.size, spec.draft_factor) == (128, 1.5)
    assert is_fine(onnx_start(tmp_path / "m" / "blurflag.onnx", log=lambda _m: None)["features.0.0.weight"])


def test_continuing_from_an_onnx_mobilenetv2_keeps_its_batch_norm_statistics(dataset: Path, tmp_path: Path) -> None:
    """From an ONNX start the batch norms stay in evaluation mode: their statistics (folded into the export) are kept,
    while the weights learn; a state-dict start trains them as usual."""
    import torch

    from trainer.imagenet import DEFAULT_WEIGHTS, export, finetune, onnx_start

    net = _trained_looking_network(4)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    export(tmp_path / "a.pt", tmp_path / "a")
    start = onnx_start(tmp_path / "a" / "blurflag.onnx", log=lambda _m: None)
    epochs: list[dict] = []
    finetune([dataset], dataset, tmp_path / "w", weights=tmp_path / "a" / "blurflag.onnx", epochs=1, batch=4,
             threads=1, log=lambda _m: None, on_epoch=epochs.append)
    best = torch.load(tmp_path / "w" / "best.pt", map_location="cpu", weights_only=True)
    assert [e["epoch"] for e in epochs] == [1]
    key = "features.3.conv.1.running_var"
    assert torch.equal(best[key], start[key])  # frozen statistics
    assert not torch.equal(best["features.3.conv.0.weight"], start["features.3.conv.0.weight"])  # learnt weights
    finetune([dataset], dataset, tmp_path / "w2", epochs=1, batch=4, threads=1, max_steps=1, log=lambda _m: None)
    fresh = torch.load(tmp_path / "w2" / "last.pt", map_location="cpu", weights_only=False)["model"]
    imagenet = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert not torch.equal(fresh[key], imagenet[key])  # a state-dict start updates its statistics


def test_run_trains_the_mobilenetv2_network_end_to_end(tmp_path: Path) -> None:
    """`blurflag-train run --network mobilenetv2`: prepare, fine-tune (epoch events), export, evaluate, as the
    trainer tab runs it; another input size is refused before anything is written."""
    import subprocess
    import sys

    from engine.model import load_classifier

    repo = Path(__file__).resolve().parents[2]
    src = write_class_folders(tmp_path / "src", per_class=6)
    base = [sys.executable, "-m", "trainer.cli", "run", str(src), "--work", str(tmp_path / "w"), "--model-out",
            str(tmp_path / "m"), "--batch", "8", "--workers", "1", "--threads", "1", "--network", "mobilenetv2",
            "--events"]
    refused = subprocess.run([*base, "--imgsz", "64"], capture_output=True, text=True, cwd=repo, timeout=300)
    assert refused.returncode == 1 and "trains at --imgsz 224" in refused.stdout
    assert not (tmp_path / "w").exists()
    proc = subprocess.run([*base, "--epochs", "2"], capture_output=True, text=True, cwd=repo, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "step"] == ["prepare", "train", "export", "evaluate"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [(e["epoch"], e["epochs"]) for e in epochs] == [(1, 2), (2, 2)]
    assert all(0.0 <= e["top1"] <= 1.0 for e in epochs)
    assert events[-1]["event"] == "done"
    clf = load_classifier(tmp_path / "m")
    assert clf.spec.size == 224 and clf.names == ("defocused_blurred", "defocused_object_portrait", "motion_blurred",
                                                  "sharp")
    report = json.loads((tmp_path / "m" / "evaluation.json").read_text())
    assert report["count"] > 0
