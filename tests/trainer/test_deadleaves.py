"""Dead-leaves pretraining: the pictures, their masks, the corpus on disk, its dataset and `blurflag-train pretrain`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.model import PRODUCT_CLASSES
from engine.preprocess import InputSpec
from trainer.card import VISIBLE_PX
from trainer.cli import main as train_main
from trainer.dataset import read_manifest
from trainer.deadleaves import corpus_items, render, write_corpus
from trainer.masks import is_subject, largest_component, person_mask
from trainer.pretrain import build_pretrain_dataset


def _high_frequency(img: np.ndarray) -> float:
    g = img.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(g, axis=1)).mean() + np.abs(np.diff(g, axis=0)).mean())


@pytest.mark.parametrize("seed", range(6))
def test_a_picture_is_a_sharp_photo_sized_frame_with_one_whole_runner_in_its_mask(seed: int) -> None:
    picture, mask = render(np.random.default_rng(seed))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert max(picture.shape[:2]) == 1024 and mask.shape == picture.shape[:2]
    # the synthesis keeps only the largest connected region of a mask: the figure must be all of it
    kept = largest_component(mask / 255.0)
    assert kept is not None and (kept >= 0.5).sum() >= 0.97 * (mask >= 128).sum()
    assert is_subject(mask / 255.0)
    # the frame is covered by leaves of many sizes: edges everywhere, not a flat backdrop
    rows = np.array_split(np.arange(picture.shape[0]), 4)
    assert all(_high_frequency(picture[r]) > 2.0 for r in rows)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 5000


def test_pictures_depend_only_on_their_seed() -> None:
    a, ma = render(np.random.default_rng(7))
    b, mb = render(np.random.default_rng(7))
    c, _ = render(np.random.default_rng(8))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_textured_leaves_carry_texture_inside_their_outlines_and_flat_ones_do_not() -> None:
    from trainer.deadleaves import _leaves, _palette

    def one_big_leaf(texture: float) -> np.ndarray:
        rng = np.random.default_rng(3)
        canvas = np.full((200, 300, 3), 128.0, np.float32)
        # one shape far larger than the canvas; with this seed it covers every pixel (the flat check shows it)
        _leaves(canvas, rng, _palette(rng, 3), 0.01, 2000.0, 2001.0, 2.5, max_shapes=1, texture=texture)
        return canvas

    flat, textured = one_big_leaf(0.0), one_big_leaf(1.0)
    assert float(np.ptp(flat, axis=(0, 1)).max()) < 1e-3  # one colour
    assert float(textured.mean(axis=2).std()) > 3.0  # levels of 0.1-0.6 of its colour: visible texture
    plain = render(np.random.default_rng(11))
    assert np.array_equal(plain[0], render(np.random.default_rng(11), texture=0.0)[0])
    busy, mask = render(np.random.default_rng(11), texture=0.8)
    assert busy.shape == plain[0].shape and is_subject(mask / 255.0)
    assert _high_frequency(busy) > _high_frequency(plain[0])


def test_a_corpus_resumes_where_it_stopped_and_finds_its_masks_like_shared_ones(tmp_path: Path) -> None:
    items = write_corpus(tmp_path, 3, seed=5, workers=1)
    first = {it.image.name: it.image.read_bytes() for it in items}
    items[1].image.unlink()  # an interrupted corpus, and a half-written file that must not count
    (tmp_path / "images" / "dl_000002.tmp.png").write_bytes(b"partial")
    again = write_corpus(tmp_path, 3, seed=5, workers=1)
    assert {it.image.name: it.image.read_bytes() for it in again} == first
    assert [it.image.name for it in corpus_items(tmp_path)] == ["dl_000000.png", "dl_000001.png", "dl_000002.png"]
    with Image.open(items[0].image) as im:
        rgb = np.asarray(im.convert("RGB"))
    found = person_mask(rgb, items[0].image)  # the shared data's images/ + masks/ layout
    with Image.open(items[0].mask) as im:
        assert found is not None and np.abs((found >= 0.5) ^ (np.asarray(im) >= 128)).mean() < 0.01


def test_a_corpus_is_never_continued_with_other_settings(tmp_path: Path) -> None:
    write_corpus(tmp_path, 2, seed=5, workers=1)
    before = sorted(p.read_bytes() for p in (tmp_path / "images").iterdir())
    for seed, texture in ((5, 0.5), (6, 0.0)):
        with pytest.raises(ValueError, match="another folder"):
            write_corpus(tmp_path, 3, seed=seed, workers=1, texture=texture)
    assert sorted(p.read_bytes() for p in (tmp_path / "images").iterdir()) == before  # nothing added or changed
    (tmp_path / "corpus.json").unlink()  # a corpus from before the settings were recorded: flat leaves
    with pytest.raises(ValueError, match="flat leaves"):
        write_corpus(tmp_path, 3, seed=5, workers=1, texture=0.5)
    assert len(write_corpus(tmp_path, 3, seed=5, workers=1)) == 3


def test_the_dataset_keeps_validation_pictures_out_of_training(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", 8, seed=1, workers=1)
    rows = build_pretrain_dataset(tmp_path / "corpus", tmp_path / "ds", InputSpec(size=64, resize="stretch"),
                                  val_pictures=2, scale=0.01, val_scale=0.02, workers=1, train_floor=VISIBLE_PX)
    assert not [r.error for r in rows if r.error]
    train = {r.source for r in rows if r.split == "train"}
    val = {r.source for r in rows if r.split == "val"}
    assert val == {str(tmp_path / "corpus" / "images" / f"dl_00000{k}.png") for k in (0, 1)}
    assert train and not train & val
    assert {r.label for r in rows if r.split == "train"} == set(PRODUCT_CLASSES)
    kinds = Counter(r.kind for r in rows if r.split == "val")
    assert kinds["clean"] == 2  # each validation picture once, sharp, besides the synthesis mix
    for r in rows:  # training blur only at visible strengths, as in the shipped recipe
        if r.split == "train" and r.kind in VISIBLE_PX:
            assert r.strength_px >= VISIBLE_PX[r.kind] - 1e-6
    assert len(read_manifest(tmp_path / "ds")) == len(rows)


def test_pretrain_checks_its_options_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["pretrain", "--work", str(tmp_path / "w"), "--pictures", "3", "--val-pictures", "3"]) == 1
    assert "--pictures" in capsys.readouterr().err
    assert train_main(["pretrain", "--work", str(tmp_path / "w"), "--texture", "1.5"]) == 1
    assert "--texture" in capsys.readouterr().err
    assert train_main(["pretrain", "--work", str(tmp_path / "w"), "--weights", str(tmp_path / "none.pt")]) == 1
    assert "--weights" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.usefixtures("ultralytics_env", "_keep_signal_handlers")
def test_pretrain_trains_a_four_class_classifier_that_shipped_can_start_from(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ultralytics")
    work = tmp_path / "pre"
    argv = ["pretrain", "--work", str(work), "--pictures", "8", "--val-pictures", "2", "--scale", "0.02",
            "--val-scale", "0.02", "--epochs", "1", "--hours", "0", "--threads", "1", "--workers", "1",
            "--imgsz", "64"]
    assert train_main(argv) == 0
    best = work / "pretrained.pt"
    from ultralytics import YOLO

    model = YOLO(str(best))
    assert model.task == "classify" and sorted(model.names.values()) == sorted(PRODUCT_CLASSES)
    assert train_main(argv) == 0  # run again: corpus and dataset reused, finished training kept
    # continued on a textured corpus from those weights (how a longer, textured pretraining is made)
    more = tmp_path / "more"
    argv2 = [a if a != str(work) else str(more) for a in argv] + ["--texture", "0.6", "--weights", str(best)]
    capfd.readouterr()
    assert train_main(argv2) == 0
    said = "".join(capfd.readouterr())
    assert f"fine-tuning {best}" in said and "yolov8n-cls.yaml" not in said
    model2 = YOLO(str(more / "pretrained.pt"))
    assert model2.task == "classify" and sorted(model2.names.values()) == sorted(PRODUCT_CLASSES)


@pytest.mark.train
@pytest.mark.usefixtures("ultralytics_env")
@pytest.mark.parametrize("name", ["deadleaves_yolov8n_cls.pt", "deadleaves_textured_yolov8n_cls.pt",
                                  "distilled_yolov8n_cls.pt"])
def test_the_committed_pretrained_starts_are_four_class_classifiers(name: str) -> None:
    """scripts/build_model.sh starts the shipped networks from these (PRE_WEIGHTS, TEX_WEIGHTS, DIST_WEIGHTS)."""
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    path = Path(__file__).resolve().parents[2] / "trainer" / "weights" / name
    model = YOLO(str(path))
    assert model.task == "classify" and sorted(model.names.values()) == sorted(PRODUCT_CLASSES)
    assert name in (path.parent / "README.md").read_text(encoding="utf-8")
