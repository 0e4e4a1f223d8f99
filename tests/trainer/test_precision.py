"""Training arithmetic and input caching (TrainConfig.precision, cache_ram_bytes; bench/train_speed.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.preprocess import InputSpec
from tests.toydata import write_class_folders
from trainer.dataset import PrepareOptions, prepare

HAS_TRAIN = all(importlib.util.find_spec(m) for m in ("torch", "ultralytics"))
pytestmark = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")
SIZE = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("precision")
    out = root / "ds"
    prepare(write_class_folders(root / "src", per_class=4), out,
            PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1, balance=False))
    return out


def test_precision_resolves_per_cpu_and_rejects_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.train as tt

    for native in (True, False):
        monkeypatch.setattr(tt, "cpu_has_native_bf16", lambda native=native: native)
        assert tt.use_bf16("auto") is native
        assert tt.use_bf16("bf16") is True
        assert tt.use_bf16("fp32") is False
    with pytest.raises(ValueError, match="precision must be one of"):
        tt.use_bf16("fp16")


def test_bf16_autocast_runs_on_the_cpu_only_inside_a_training_call() -> None:
    import torch
    import ultralytics.engine.trainer as ul_trainer

    from trainer.train import cpu_bf16_autocast

    original = ul_trainer.autocast
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="CUDA"):  # what ultralytics does with amp="bf16" on the CPU by itself
        original(torch.bfloat16, device="cpu")
    with cpu_bf16_autocast():
        with ul_trainer.autocast(torch.bfloat16, device="cpu"):
            assert conv(x).dtype == torch.bfloat16
        with ul_trainer.autocast(False, device="cpu"):  # float32 training is left as it was
            assert conv(x).dtype == torch.float32
    assert ul_trainer.autocast is original
    with pytest.raises(KeyError), cpu_bf16_autocast():  # restored when training fails too
        raise KeyError("boom")
    assert ul_trainer.autocast is original


def test_training_arguments_follow_precision_and_the_cache_budget(dataset: Path) -> None:
    from trainer.train import TrainConfig, _train_args

    def args(**kw: object) -> dict[str, object]:
        return _train_args(TrainConfig(**kw), dataset, SIZE, dataset.parent / "runs", "t")  # type: ignore[arg-type]

    assert args(precision="bf16")["amp"] == "bf16"
    assert args(precision="fp32")["amp"] is False
    assert args()["cache"] == "ram"  # 4 classes x a few 48-px images fit easily
    assert "cache" not in args(cache_ram_bytes=SIZE * SIZE * 3)  # more than one image does not


@pytest.mark.slow
def test_a_bf16_run_trains_in_bfloat16_and_saves_float_weights_the_engine_runs(
        tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, ultralytics_env: None) -> None:
    import torch

    from engine.model import load_classifier
    from trainer.dataset import read_dataset_spec
    from trainer.export import export_onnx
    from trainer.train import TrainConfig, train_model

    autocasts: list[tuple[str, torch.dtype | None]] = []
    real = torch.amp.autocast

    def spy(device_type: str, *args: object, **kwargs: object) -> object:
        autocasts.append((device_type, kwargs.get("dtype")))  # type: ignore[arg-type]
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch.amp, "autocast", spy)
    logs: list[str] = []
    best = train_model(dataset, tmp_path / "work", TrainConfig(epochs=1, batch=8, threads=1, precision="bf16"),
                       log=logs.append)
    assert ("cpu", torch.bfloat16) in autocasts  # every training batch's forward pass
    assert any("bfloat16 autocast" in line for line in logs)
    ckpt = torch.load(best, weights_only=False)
    model = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    assert all(p.dtype in (torch.float16, torch.float32) for p in model.parameters())  # never bfloat16
    images = sorted((dataset / "val").rglob("*.png"))[:4]
    report = export_onnx(best, tmp_path / "model", read_dataset_spec(dataset), images)
    assert report.max_abs_diff < 1e-4
    assert load_classifier(tmp_path / "model").names == report.names
