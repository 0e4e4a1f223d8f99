"""Weight averaging of training runs (trainer/soup.py): the arithmetic, BatchNorm recalibration, a real soup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.preprocess import InputSpec
from tests.toydata import write_class_folders
from trainer.dataset import PrepareOptions, prepare

HAS_TRAIN = all(__import__("importlib").util.find_spec(m) for m in ("torch", "ultralytics", "onnx"))
pytestmark = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")
SIZE = 64


def test_average_weights_means_floats_and_keeps_counts() -> None:
    import torch

    from trainer.soup import average_weights

    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    c = {"w": torch.tensor([2.0, 1.0]), "n": torch.tensor(1)}
    got = average_weights([a, b, c])
    assert torch.equal(got["w"], torch.tensor([2.0, 3.0])) and int(got["n"]) == 5


@pytest.mark.parametrize("other", [{"w": np.zeros(3)}, {"v": np.zeros(2)}])
def test_average_weights_refuses_other_networks(other: dict[str, np.ndarray]) -> None:
    import torch

    from trainer.soup import SoupError, average_weights

    with pytest.raises(SoupError, match="run 2 is not the same network"):
        average_weights([{"w": torch.zeros(2)}, {k: torch.from_numpy(v) for k, v in other.items()}])


def test_recalibrated_batchnorm_holds_the_plain_statistics_of_the_batches() -> None:
    import torch

    from trainer.soup import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net[1].running_mean.fill_(7.0)   # stale statistics, as averaged from other runs
    gen = np.random.default_rng(0)
    batches = [gen.normal(size=(5, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    recalibrate_batchnorm(net, batches)
    with torch.no_grad():
        conv = torch.cat([net[0](torch.from_numpy(b)) for b in batches])
    assert not net.training
    np.testing.assert_allclose(net[1].running_mean.numpy(), conv.mean((0, 2, 3)).numpy(), atol=1e-5)
    # the cumulative average of per-batch unbiased variances (equal batch sizes)
    per_batch = [net[0](torch.from_numpy(b)).detach().var((0, 2, 3), unbiased=True) for b in batches]
    np.testing.assert_allclose(net[1].running_var.numpy(), torch.stack(per_batch).mean(0).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ultralytics_env: None) -> tuple[Path, list[Path], Path]:
    """A toy dataset, one start trained on it, and two fine-tunings of that start with other training seeds."""
    from trainer.train import TrainConfig, train_model

    root = tmp_path_factory.mktemp("soup")
    dataset = root / "ds"
    prepare(write_class_folders(root / "src", per_class=6), dataset,
            PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1))
    start = train_model(dataset, root / "start", TrainConfig(epochs=2, threads=1))
    tuned = [train_model(dataset, root / f"seed{s}", TrainConfig(epochs=1, threads=1, seed=s,
                                                               warmup_bias_lr=0.0), start) for s in (0, 1)]
    return dataset, tuned, start


def _state(pt: Path) -> dict[str, np.ndarray]:
    import torch

    ckpt = torch.load(str(pt), map_location="cpu", weights_only=False)
    net = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    return {k: v.float().numpy() for k, v in net.state_dict().items()}


@pytest.mark.slow
def test_soup_averages_the_runs_and_exports_a_model_the_engine_runs(tmp_path: Path, runs,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.soup
    from engine.model import load_classifier
    from engine.preprocess import load_model_input
    from trainer.soup import make_soup

    # The toy runs are at chance (top-1 0.25 on a handful of images), so whether the soup gets one image more or less
    # right is a coin toss (it once scored 0.0 in a full-suite run and was refused). The quality gate itself is tested
    # with set scores in test_soup_refuses_runs_it_cannot_average; here it is opened.
    monkeypatch.setattr(trainer.soup, "MAX_DROP", 1.0)
    dataset, tuned, _ = runs
    a, b = (_state(p) for p in tuned)
    assert any(not np.array_equal(a[k], b[k]) for k in a)   # the seeds trained two different networks
    report = make_soup(tuned, tmp_path / "soup", dataset)
    assert report.runs == 2 and len(report.run_top1) == 2 and report.images_checked > 0
    assert report.export.max_abs_diff < 1e-4   # ONNX agrees with the soup's checkpoint
    soup = _state(report.checkpoint)
    for k in a:
        if k.endswith(("running_mean", "running_var")):
            continue
        if not k.endswith("num_batches_tracked"):   # float16 storage: compare at its precision
            np.testing.assert_allclose(soup[k], (a[k] + b[k]) / 2, rtol=2e-3, atol=2e-3)
    means = [k for k in a if k.endswith("running_mean")]
    assert any(not np.allclose(soup[k], (a[k] + b[k]) / 2, atol=1e-3) for k in means)   # measured anew
    classifier = load_classifier(tmp_path / "soup" / "model")
    image = next((dataset / "val").rglob("*.png"))
    probs = classifier.predict(load_model_input(image, classifier.spec)[None])
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1.0) < 1e-5
    # without recalibration the runs' statistics are averaged like the weights
    plain = _state(make_soup(tuned, tmp_path / "plain", dataset, calibrate=False).checkpoint)
    for k in means:
        np.testing.assert_allclose(plain[k], (a[k] + b[k]) / 2, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_soup_refuses_runs_it_cannot_average(tmp_path: Path, runs, monkeypatch: pytest.MonkeyPatch,
                                             _keep_signal_handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    import trainer.soup
    from trainer.cli import main as train_main
    from trainer.soup import SoupError, make_soup

    dataset, tuned, _ = runs
    with pytest.raises(SoupError, match="at least two runs"):
        make_soup(tuned[:1], tmp_path / "one", dataset)
    # runs from different starts average into a far worse network: refused, nothing written
    scores = iter([0.9, 0.85, 0.6])   # run 1, run 2, soup
    monkeypatch.setattr(trainer.soup, "_top1", lambda *_: next(scores))
    assert train_main(["soup", str(tmp_path / "bad"), *map(str, tuned), "--dataset", str(dataset)]) == 1
    assert "did not start from the same weights" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "best.pt").exists() and not (tmp_path / "bad" / "model").exists()
    assert train_main(["soup", str(tmp_path / "x"), str(tmp_path / "missing.pt"), str(tuned[0]),
                       "--dataset", str(dataset)]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
