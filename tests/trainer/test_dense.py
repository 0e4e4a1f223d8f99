"""Region-supervised training (trainer/dense.py): targets per kind, maps that move with the image, a real run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.preprocess import InputSpec
from tests.toydata import write_class_folders
from trainer.dataset import PrepareOptions, prepare

HAS_TRAIN = all(__import__("importlib").util.find_spec(m) for m in ("torch", "ultralytics", "onnx"))
needs_train = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")
SIZE = 64
GRID_MID = 15  # a target column inside the runner of _runner_mask (x 180..260 of 420 px at GRID = 28)


def _runner_mask(h: int = 280, w: int = 420) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[60:280, 180:260] = 1.0  # a tall runner in the middle, touching the bottom edge
    return m


def test_whole_frame_kinds_are_blurred_everywhere_with_their_type() -> None:
    from trainer.dense import region_targets

    for kind, blur_type in (("defocus", 1), ("shake", 2), ("linear_motion", 2)):
        t = region_targets(kind, "any", _runner_mask())
        assert t.blur_type == blur_type
        assert t.blur.min() == 1.0 and t.known.min() == 1.0
        assert t.person_known and t.person.max() == 1.0


def test_subject_blur_is_known_only_on_the_runner_and_bokeh_everywhere() -> None:
    from trainer.dense import region_targets

    mask = _runner_mask()
    subject = region_targets("subject_defocus", "defocused_object_portrait", mask)
    assert subject.blur_type == 1
    # the runner's cells are blurred; the background is whatever the source photo had: not a target
    np.testing.assert_allclose(subject.known, subject.person)
    assert subject.known[0, 0] == 0.0 and subject.known[-1, GRID_MID] == 1.0
    bokeh = region_targets("bokeh", "sharp", mask)
    assert bokeh.blur_type == 1 and bokeh.known.min() == 1.0
    np.testing.assert_allclose(bokeh.blur, 1.0 - bokeh.person)
    panning = region_targets("panning", "sharp", mask)
    assert panning.blur_type == 2
    assert region_targets("subject_motion", "motion_blurred", mask).blur_type == 2
    with pytest.raises(ValueError, match="person mask"):
        region_targets("subject_motion", "motion_blurred", None)



def test_sharp_photos_only_say_the_runner_is_sharp() -> None:
    from trainer.dense import region_targets

    mask = _runner_mask()
    for kind in ("original", "clean", "high_iso"):
        t = region_targets(kind, "sharp", mask)
        assert t.blur.max() == 0.0  # nothing blurred where it is known...
        np.testing.assert_allclose(t.known, t.person)  # ...which is on the runner only (a background may be bokeh)
    assert region_targets("clean", "sharp", None).known.max() == 0.0  # no runner found: nothing known
    aug = region_targets("augmented", "sharp", mask)  # cropped and flipped: the mask no longer fits
    assert not aug.person_known and aug.known.max() == 0.0
    real_defocus = region_targets("original", "defocused_blurred", None)
    assert real_defocus.blur_type == 1 and real_defocus.known.min() == 1.0
    real_motion = region_targets("original", "motion_blurred", mask)
    assert real_motion.known.max() == 0.0  # where a real photo's motion blur is, nobody recorded


@needs_train
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_and_flip_move_the_maps_with_the_image(seed: int) -> None:
    import torch
    import torch.nn.functional as F

    from trainer.dense import GRID, DenseConfig, augment

    rng = np.random.default_rng(seed)
    # an image of random blocks, and a map that is the image's own brightness at GRID resolution
    blocks = rng.integers(0, 256, (2, 1, 4, 4)).astype(np.float32)
    img = torch.from_numpy(blocks).repeat_interleave(56, 2).repeat_interleave(56, 3)  # 224 x 224
    images = img.repeat(1, 3, 1, 1).to(torch.uint8)
    maps = F.avg_pool2d(img / 255.0, 224 // GRID).repeat(1, 5, 1, 1)
    cfg = DenseConfig(crop_scale=0.4, fliplr=0.5, hsv_s=0.0, hsv_v=0.0)
    x, m = augment(images, maps, torch.Generator().manual_seed(seed), cfg)
    assert x.shape == (2, 3, 224, 224) and m.shape == maps.shape
    seen = F.avg_pool2d(x[:, :1], 224 // GRID)
    assert float((seen - m[:, :1]).abs().mean()) < 0.01  # the map still describes what the image shows
    assert float((seen - maps[:, :1]).abs().mean()) > 0.05  # and the crop or flip did move both


@needs_train
def test_colour_jitter_leaves_the_maps_and_stays_in_range() -> None:
    import torch

    from trainer.dense import DenseConfig, augment

    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    maps = torch.rand(4, 5, 28, 28)
    x, m = augment(images, maps, torch.Generator().manual_seed(0), DenseConfig(crop_scale=0.0, fliplr=0.0))
    torch.testing.assert_close(m, maps, atol=1e-5, rtol=0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float((x - images.float() / 255).abs().mean()) > 0.01


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dense")
    src = write_class_folders(root / "src", per_class=6)
    out = root / "ds"
    prepare(src, out, PrepareOptions(spec=InputSpec(size=SIZE, resize="stretch"), workers=1))
    return out


def _weights(pt: Path) -> dict[str, object]:
    import torch

    return {k: v.clone() for k, v in torch.load(str(pt), weights_only=False)["model"].state_dict().items()}


@needs_train
@pytest.mark.slow
def test_dense_run_gives_a_classifier_the_engine_and_ultralytics_take(tmp_path: Path, toy_dataset: Path,
                                                                        ultralytics_env: None) -> None:
    from engine.model import load_classifier
    from trainer.dataset import read_dataset_spec
    from trainer.dense import DenseConfig, train_dense
    from trainer.export import export_onnx
    from trainer.train import TrainConfig, train_model

    logs: list[str] = []
    cfg = DenseConfig(epochs=2, threads=1)
    best = train_dense(toy_dataset, tmp_path / "a", cfg, log=logs.append)
    assert any("region targets for" in line for line in logs)
    images = sorted((toy_dataset / "val").rglob("*.png"))[:4]
    report = export_onnx(best, tmp_path / "model", read_dataset_spec(toy_dataset), images)
    assert report.max_abs_diff < 1e-4
    assert load_classifier(tmp_path / "model").names == report.names
    # the same loop without the region loss is the control: same seed, same augmentation, other weights
    ctrl = train_dense(toy_dataset, tmp_path / "b", DenseConfig(epochs=2, threads=1, dense_weight=0.0))
    ctrl2 = train_dense(toy_dataset, tmp_path / "c", DenseConfig(epochs=2, threads=1, dense_weight=0.0))
    wa, wb, wc = _weights(best), _weights(ctrl), _weights(ctrl2)
    assert all(np.array_equal(wb[k].numpy(), wc[k].numpy()) for k in wb)  # reproducible
    assert any(not np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)  # the region loss reaches the net
    # stage 2 of the recipe fine-tunes a dense stage-1 model with ultralytics as usual
    tuned = train_model(toy_dataset, tmp_path / "ft", TrainConfig(epochs=1, threads=1, warmup_bias_lr=0.0), best)
    assert tuned.is_file()


@needs_train
@pytest.mark.slow
def test_dense_run_resumes_after_the_last_finished_epoch(tmp_path: Path, toy_dataset: Path,
                                                         ultralytics_env: None) -> None:
    from trainer.dense import DenseConfig, train_dense
    from trainer.train import EpochStats

    stop = threading.Event()

    def after(stats: EpochStats) -> None:
        if stats.epoch == 1:
            stop.set()

    with pytest.raises(InterruptedError):
        train_dense(toy_dataset, tmp_path, DenseConfig(epochs=3, threads=1), on_epoch=after, stop_event=stop)
    logs: list[str] = []
    epochs: list[int] = []
    best = train_dense(toy_dataset, tmp_path, DenseConfig(epochs=3, threads=1), resume=True, log=logs.append,
                       on_epoch=lambda s: epochs.append(s.epoch))
    assert "resuming after epoch 1 of 3" in logs
    assert epochs == [2, 3]
    assert best.is_file()


@needs_train
def test_a_start_with_other_classes_is_refused(tmp_path: Path, toy_dataset: Path, ultralytics_env: None) -> None:
    import torch
    from ultralytics.nn.tasks import ClassificationModel

    from trainer.dense import train_dense

    net = ClassificationModel("yolov8n-cls.yaml", nc=2, verbose=False)
    net.names = {0: "cat", 1: "dog"}
    pt = tmp_path / "other.pt"
    torch.save({"model": net, "train_args": {"task": "classify"}}, pt)
    with pytest.raises(ValueError, match="not the dataset's"):
        train_dense(toy_dataset, tmp_path / "w", weights=pt)
