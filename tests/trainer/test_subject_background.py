"""Subject defocus only from photos whose background stays sharp (`--subject-background`)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.model import SHARP
from tests.toydata import open_as_ultralytics_patches_it
from trainer import masks
from trainer.cli import main as train_main
from trainer.dataset import (
    SHARP_BACKGROUND_MIN,
    PrepareOptions,
    SourceImage,
    background_sharpness,
    plan_jobs,
    prepare,
    sharp_background_checker,
)
from trainer.shipped import plan_shipped_jobs

H, W = 240, 360
BOX = (slice(60, 200), slice(140, 220))  # the person: rows, columns


def _photo(soft_background: bool, seed: int = 0) -> np.ndarray:
    """Fine random texture everywhere; with `soft_background` all but the person is defocused, as on bokeh."""
    rng = np.random.default_rng(seed)
    sharp = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if not soft_background:
        return sharp
    out = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(6)), dtype=np.uint8).copy()
    out[BOX] = sharp[BOX]
    return out


def _mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[BOX] = 255
    return m


def _write(tmp_path: Path, name: str, soft_background: bool, mask_dir: Path, seed: int = 0) -> Path:
    path = tmp_path / "photos" / "sharp" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(soft_background, seed)).save(path, quality=95)
    cached = masks.cached_mask_path(path, mask_dir)
    cached.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_mask()).save(cached)
    return path


def test_background_sharpness_tells_a_sharp_background_from_bokeh() -> None:
    sharp = background_sharpness(_photo(False), _mask())
    soft = background_sharpness(_photo(True), _mask())
    assert sharp > 0.5 and soft < SHARP_BACKGROUND_MIN / 2, (sharp, soft)
    assert background_sharpness(_photo(False), np.full((H, W), 255, np.uint8)) == 0.0  # no background at all


@pytest.mark.parametrize("ultralytics_imported", [False, True])
def test_checker_judges_each_photo_from_its_file_and_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ultralytics_imported: bool
) -> None:
    monkeypatch.setattr(masks, "_mp_state", {"ok": False})  # as without MediaPipe: cached masks only
    if ultralytics_imported:  # the trainer's process once training has started: Image.open patched
        monkeypatch.setattr(Image, "open", open_as_ultralytics_patches_it(Image.open))
    mask_dir = tmp_path / "masks"
    good = _write(tmp_path, "street.jpg", False, mask_dir)
    bokeh = _write(tmp_path, "portrait.jpg", True, mask_dir)
    no_mask = tmp_path / "photos" / "sharp" / "nomask.jpg"
    Image.fromarray(_photo(False)).save(no_mask)
    broken = tmp_path / "photos" / "sharp" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    check = sharp_background_checker(mask_dir, SHARP_BACKGROUND_MIN)
    verdicts = {p.name: check(SourceImage(p, SHARP, p.stem)) for p in (good, bokeh, no_mask, broken)}
    assert verdicts == {"street.jpg": True, "portrait.jpg": False, "nomask.jpg": False, "broken.jpg": False}


def _sources(n: int) -> list[SourceImage]:
    return [SourceImage(Path(f"/x/p{i}.jpg"), SHARP, f"g{i}") for i in range(n)]


def test_only_subject_defocus_is_kept_to_sharp_backgrounds() -> None:
    items = _sources(12)
    sharp_bg = {s.path for s in items[:4]}

    def passes(s: SourceImage) -> bool:
        return s.path in sharp_bg

    splits = {"train": items[:8], "val": items[8:10], "test": items[10:]}
    gated = plan_shipped_jobs(splits, lambda s: True, seed=3, sharp_background=passes)
    plain = plan_shipped_jobs(splits, lambda s: True, seed=3)
    assert plain == plan_shipped_jobs(splits, lambda s: True, seed=3, sharp_background=None)  # off: the same plan
    assert Counter(j.kind for j in gated if j.split == "train") == Counter(j.kind for j in plain if j.split == "train")
    for j in gated:
        if j.kind == "subject_defocus":
            assert j.source.path in sharp_bg, j
    for kind in ("bokeh", "panning", "subject_motion"):  # the other person kinds still use every photo
        assert {j.source.path for j in gated if j.kind == kind and j.split == "train"} - sharp_bg
    assert not any(j.kind == "subject_defocus" for j in gated if j.split != "train")  # no sharp background there

    jobs = plan_jobs({"train": items}, {"train": {"defocused_object_portrait": 20, "motion_blurred": 6}}, (),
                     seed=1, sharp_background=passes)
    portrait = [j for j in jobs if j.kind == "subject_defocus"]
    assert len(portrait) == 20 and {j.source.path for j in portrait} <= sharp_bg
    assert {j.source.path for j in jobs if j.kind == "subject_motion"} - sharp_bg


def test_prepare_makes_subject_defocus_from_the_sharp_background_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(masks, "_mp_state", {"ok": False})
    mask_dir = tmp_path / "masks"
    for i in range(4):
        _write(tmp_path, f"street_{i}.jpg", False, mask_dir, seed=i)
        _write(tmp_path, f"portrait_{i}.jpg", True, mask_dir, seed=10 + i)
    options = PrepareOptions(val_fraction=0.0, synth={"defocused_object_portrait": 8}, workers=1,
                             mask_dir=mask_dir, subject_background=SHARP_BACKGROUND_MIN)
    rows = prepare(tmp_path / "photos", tmp_path / "ds", options)
    made = [r for r in rows if r.kind == "subject_defocus"]
    assert len(made) == 8 and not any(r.error for r in made)
    assert all(Path(r.source).name.startswith("street_") for r in made), [r.source for r in made]
    with open(tmp_path / "ds" / "manifest.csv", newline="") as f:
        assert sum(r["kind"] == "subject_defocus" for r in csv.DictReader(f)) == 8


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_out_of_range_values_are_refused(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos" / "sharp").mkdir(parents=True)
    Image.fromarray(_photo(False)).save(tmp_path / "photos" / "sharp" / "a.jpg")
    code = train_main(["prepare", str(tmp_path / "photos"), str(tmp_path / "ds"), "--subject-background", value])
    assert code != 0
    assert "--subject-background" in capsys.readouterr().err
    assert not (tmp_path / "ds" / "manifest.csv").exists()


def test_held_out_subject_blurs_record_how_sharp_the_rest_of_their_frame_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation splits subject blurs by their background (trainer.card.subject_background_split): a validation or
    test example of a subject kind records `background_sharpness`; training examples and other kinds do not."""
    import json

    from engine.preprocess import InputSpec
    from trainer.dataset import Job, make_example

    monkeypatch.setattr(masks, "_mp_state", {"ok": False})
    mask_dir = tmp_path / "masks"
    street = SourceImage(_write(tmp_path, "street.jpg", False, mask_dir), SHARP, "street")
    portrait = SourceImage(_write(tmp_path, "portrait.jpg", True, mask_dir, seed=1), SHARP, "portrait")
    spec = InputSpec(size=64, resize="stretch")

    def params(split: str, kind: str, source: SourceImage) -> dict[str, float]:
        label = {"subject_defocus": "defocused_object_portrait", "subject_motion": "motion_blurred",
                 "bokeh": SHARP}[kind]
        job = Job(split, label, source, kind, 7, out_name=f"{split}_{kind}_{source.group}.png")
        row = make_example(job, tmp_path / "ds", spec, mask_dir)
        assert not row.error, row.error
        return json.loads(row.params)

    assert params("val", "subject_defocus", street)["background_sharpness"] > 0.5
    assert params("test", "subject_motion", portrait)["background_sharpness"] < SHARP_BACKGROUND_MIN
    assert "background_sharpness" not in params("train", "subject_defocus", street)   # not read there
    assert "background_sharpness" not in params("val", "bokeh", street)               # not a subject blur
