"""The shipped-model recipe: split by group, job planning, and the fine-tuning options of `blurflag-train shipped`."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.model import SHARP
from engine.preprocess import InputSpec
from trainer.cli import main as train_main
from trainer.dataset import SourceImage
from trainer.shipped import TRAIN_MIX, parse_gap, parse_mix, plan_shipped_jobs
from trainer.synthesis import strength_range


def _splits() -> dict[str, list[SourceImage]]:
    def photos(prefix: str, n: int) -> list[SourceImage]:
        return [SourceImage(Path(f"/x/{prefix}{i}.jpg"), SHARP, f"{prefix}{i // 3}") for i in range(n)]

    return {"train": photos("tr", 30), "val": photos("va", 9), "test": photos("te", 12)}


def test_mix_overrides_one_kind_and_keeps_the_rest() -> None:
    mix = parse_mix(["clean=700", "shake=5"])
    assert mix[SHARP]["clean"] == 700 and mix["motion_blurred"]["shake"] == 5
    assert mix["defocused_blurred"] == TRAIN_MIX["defocused_blurred"]
    assert TRAIN_MIX[SHARP]["clean"] == 400  # the recipe itself is not modified


@pytest.mark.parametrize("item", ["clean", "blurry=3", "clean=lots", "clean=-1"])
def test_bad_mix_items_are_rejected_with_the_known_kinds(item: str) -> None:
    with pytest.raises(ValueError, match="--mix"):
        parse_mix([item])


def test_reducing_gap_option() -> None:
    assert parse_gap("none") is None and parse_gap(None) is None and parse_gap("3") == 3.0
    for bad in ("0.5", "x", "nan"):
        with pytest.raises(ValueError, match="reducing-gap"):
            parse_gap(bad)


def test_plan_follows_the_mix_and_the_synthesis_seed_only_changes_the_draw() -> None:
    splits = _splits()
    mix = parse_mix(["clean=40", "defocus=8"])
    jobs = plan_shipped_jobs(splits, lambda s: True, seed=1, mix=mix)
    train = Counter(j.kind for j in jobs if j.split == "train")
    assert train["clean"] == 40 and train["defocus"] == 8 and train["shake"] == TRAIN_MIX["motion_blurred"]["shake"]
    assert Counter(j.kind for j in jobs if j.split == "val")["defocus"] == 2  # a quarter of train
    test = [j for j in jobs if j.split == "test"]
    assert sorted(j.source.path.name for j in test if j.kind == "clean") == sorted(s.path.name for s in splits["test"])
    other = plan_shipped_jobs(splits, lambda s: True, seed=2, mix=mix)
    assert [j.seed for j in other] != [j.seed for j in jobs]
    for split in ("train", "val", "test"):  # a different draw never moves a photo into another split
        assert {j.source for j in other if j.split == split} <= set(splits[split])


def test_train_floor_applies_to_training_jobs_only() -> None:
    floor = {"defocus": 8.0, "shake": 24.0}
    jobs = plan_shipped_jobs(_splits(), lambda s: True, seed=1, train_floor=floor)
    for j in jobs:
        want = floor.get(j.kind, 0.0) if j.split == "train" else 0.0
        assert j.min_strength_px == want, j
    assert any(j.min_strength_px == 8.0 for j in jobs) and any(j.min_strength_px == 24.0 for j in jobs)


def test_lens_softness_applies_to_every_job_of_every_split() -> None:
    plain = plan_shipped_jobs(_splits(), lambda s: True, seed=1)
    soft = plan_shipped_jobs(_splits(), lambda s: True, seed=1, lens_softness_px=2.0)
    assert all(j.lens_softness_px == 0.0 for j in plain)
    assert all(j.lens_softness_px == 2.0 for j in soft)
    assert {j.split for j in soft} == {"train", "val", "test"}
    # the option changes the finishing only, never which photo gets which blur
    assert [replace(j, lens_softness_px=0.0) for j in soft] == plain


@pytest.mark.parametrize(("option", "value"), [("reframe", 0.5), ("veil", 0.3), ("sharpen", 0.5)])
def test_training_only_options_never_move_a_draw(option: str, value: float) -> None:
    plain = plan_shipped_jobs(_splits(), lambda s: True, seed=1)
    changed = plan_shipped_jobs(_splits(), lambda s: True, seed=1, **{option: value})
    assert {getattr(j, option) for j in changed if j.split == "train"} == {value}
    assert {getattr(j, option) for j in changed if j.split != "train"} == {0.0}
    # which photo gets which blur, and every validation and test job, stay exactly as without the option
    assert [replace(j, **{option: 0.0}) for j in changed] == plain


def test_audited_masks_keep_the_mask_kinds_training_examples_off_other_peoples_masks() -> None:
    """With a mask check (the audit), the mask kinds' training examples use only allowed photos, spread over them in
    the plan's own shuffled order, and nothing else moves: every other training job, every validation and test job
    (photo, seed and name) stay those of the plan without it; a check that allows no photo leaves the plan as is."""
    from trainer.synthesis import MASK_KINDS

    splits = _splits()
    refused = {s.path for s in splits["train"][::3]} | {splits["val"][0].path, splits["test"][0].path}
    plain = plan_shipped_jobs(splits, lambda s: True, seed=1)
    audited = plan_shipped_jobs(splits, lambda s: True, seed=1, mask_ok=lambda s: s.path not in refused)
    assert len(audited) == len(plain)
    moved = [(a, b) for a, b in zip(plain, audited, strict=True) if a != b]
    assert moved and all(a.split == "train" and a.kind in MASK_KINDS for a, _ in moved)
    assert all(replace(b, source=a.source, out_name=a.out_name) == a for a, b in moved)   # the same seed and kind
    masked_train = [j for j in audited if j.split == "train" and j.kind in MASK_KINDS]
    assert masked_train and not any(j.source.path in refused for j in masked_train)
    assert any(j.source.path in refused for j in audited if j.split == "train" and j.kind not in MASK_KINDS)
    assert any(j.source.path in refused for j in audited if j.split != "train" and j.kind in MASK_KINDS)
    assert plan_shipped_jobs(splits, lambda s: True, seed=1, mask_ok=lambda s: False) == plain


def test_the_audited_mask_check_refuses_other_subjects_and_allows_unaudited_photos() -> None:
    from trainer.shipped import audited_mask_check

    check = audited_mask_check({"race/a.jpg": "main", "race/b.jpg": "not_main", "race/c.jpg": "unclear"})
    verdicts = [check(SourceImage(Path(f"/shared/data/race/{n}.jpg"), SHARP, "g")) for n in ("a", "b", "c", "d")]
    assert verdicts == [True, False, False, True]
    committed = audited_mask_check()   # the committed audit: its race04 frame holds a runner behind the main one
    frame = "race/race04/runnerbar/1701587589417_b5114f46_842d_48dc_abd2_3e2e8696c451.jpg"
    assert not committed(SourceImage(Path("/anywhere/data") / frame, SHARP, "race04"))


def test_audited_masks_reach_the_dataset_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`blurflag-train shipped --audited-masks` plans with the audit's check and logs how many training photos with a
    mask it leaves out of the mask kinds; without the option, no check and no such line."""
    from trainer import masks, shipped

    seen: list[object] = []

    def fake_plan(*args: object, **kwargs: object) -> list:
        seen.append(args[11] if len(args) > 11 else kwargs.get("mask_ok"))
        return []

    frame = "race/race04/runnerbar/1701587589417_b5114f46_842d_48dc_abd2_3e2e8696c451.jpg"   # audited not_main
    train = [SourceImage(tmp_path / "data" / frame, SHARP, "race04"), SourceImage(tmp_path / "own.jpg", SHARP, "own")]
    monkeypatch.setattr(shipped, "plan_shipped_jobs", fake_plan)
    monkeypatch.setattr(shipped, "split_sources", lambda *a, **k: {"train": train, "val": [], "test": []})
    monkeypatch.setattr(shipped, "write_dataset", lambda *a, **k: [])
    monkeypatch.setattr(masks, "load_shared_mask", lambda path: np.ones((4, 4), np.uint8))   # both have a mask
    logs = []
    for extra in ([], ["--audited-masks"]):
        work = tmp_path / f"w{len(extra)}"
        train_main(["shipped", "--shared", str(tmp_path), "--work", str(work), "--model-out", str(work / "m"),
                    "--prepare-only", *extra])
        logs.append(capsys.readouterr().out)
    assert seen[0] is None and callable(seen[1])
    assert "audited masks" not in logs[0]
    assert "audited masks: 1 of the 2 training photos with a mask make no examples of the mask kinds" in logs[1]


def _noise_photo(tmp_path: Path) -> Path:
    from PIL import Image

    src = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 450, 3), dtype=np.uint8)).save(src)
    return src


def test_veil_reaches_its_share_of_every_class(tmp_path: Path) -> None:
    import json

    from trainer.dataset import Job, make_example

    src = _noise_photo(tmp_path)
    spec = InputSpec(size=64, resize="stretch")
    hits = 0
    for seed in range(16):
        for kind, label in (("clean", SHARP), ("defocus", "defocused_blurred")):  # every class alike
            row = make_example(Job("train", label, SourceImage(src, SHARP, "g"), kind, seed, f"{kind}{seed}.png",
                                   veil=0.5), tmp_path / "out", spec, None)
            assert not row.error
            hits += "veil_t" in json.loads(row.params)
    assert 8 <= hits <= 24  # about half of 32
    off = make_example(Job("train", SHARP, SourceImage(src, SHARP, "g"), "clean", 3, "p.png"), tmp_path / "out", spec,
                       None)
    assert "veil_t" not in json.loads(off.params)


def test_sharpen_changes_only_the_finishing_of_every_class(tmp_path: Path) -> None:
    import json

    from trainer.dataset import Job, make_example

    src = _noise_photo(tmp_path)
    spec = InputSpec(size=64, resize="stretch")
    for kind, label in (("clean", SHARP), ("shake", "motion_blurred")):  # every class alike
        job = Job("train", label, SourceImage(src, SHARP, "g"), kind, 7, f"{kind}.png")
        off = json.loads(make_example(job, tmp_path / "off", spec, None).params)
        on = json.loads(make_example(replace(job, sharpen=1.0), tmp_path / "on", spec, None).params)
        assert on["sharpen_amount"] >= 0.3 and off["sharpen_amount"] <= 0.6
        # the same example otherwise: its blur and noise (the finishing draws JPEG quality after sharpening)
        finishing = ("sharpen", "jpeg")
        assert {k: v for k, v in on.items() if not k.startswith(finishing)} == \
            {k: v for k, v in off.items() if not k.startswith(finishing)}


def test_held_out_only_makes_exactly_the_draws_validation_and_test_jobs(tmp_path: Path, monkeypatch) -> None:
    import trainer.shipped
    from trainer.shipped import build_shipped_dataset

    made: list[list] = []
    monkeypatch.setattr(trainer.shipped, "split_sources", lambda shared, seed: _splits())
    monkeypatch.setattr(trainer.shipped, "write_dataset", lambda out, jobs, *a, **k: made.append(list(jobs)) or [])
    spec = InputSpec(size=32, resize="stretch")
    for held_out_only in (False, True):
        build_shipped_dataset(tmp_path, tmp_path / "out", spec, synth_seed=11, workers=1, sharpen=0.5,
                              held_out_only=held_out_only)
    whole, held = made
    assert {j.split for j in whole} == {"train", "val", "test"}
    # the same jobs (photo, kind, seed, file name) as the whole draw's, so the same images
    assert held == [j for j in whole if j.split != "train"] and held


@pytest.mark.usefixtures("_keep_signal_handlers")
def test_held_out_only_is_refused_for_a_training_run(tmp_path: Path, capsys) -> None:
    base = ["shipped", "--shared", str(tmp_path), "--work", str(tmp_path / "w"), "--model-out", str(tmp_path / "m")]
    assert train_main([*base, "--held-out-only"]) != 0
    assert "--prepare-only" in capsys.readouterr().err
    assert not (tmp_path / "w" / "dataset").exists()


@pytest.mark.usefixtures("_keep_signal_handlers")
def test_a_dataset_without_training_images_is_not_trained_on(tmp_path: Path, monkeypatch, capsys) -> None:
    import trainer.shipped
    import trainer.train
    from tests.toydata import write_class_folders
    from trainer.dataset import MANIFEST, PrepareOptions, prepare

    src = write_class_folders(tmp_path / "src", per_class=2)
    monkeypatch.setattr(trainer.shipped, "build_shipped_dataset",
                        lambda shared, out_dir, spec, *a, **k: prepare(src, out_dir, PrepareOptions(spec=spec, workers=1)))
    monkeypatch.setattr(trainer.train, "train_model", lambda *a, **k: pytest.fail("trained without training images"))
    work = tmp_path / "work"
    base = ["shipped", "--shared", str(tmp_path), "--work", str(work), "--model-out", str(tmp_path / "m"), "--imgsz", "32"]
    assert train_main([*base, "--prepare-only"]) == 0
    manifest = work / "dataset" / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join([lines[0]] + [ln for ln in lines[1:] if not ln.startswith("train,")]))
    assert train_main([*base, "--resume"]) != 0
    assert "no training images" in capsys.readouterr().err


def test_reframe_box_keeps_the_runner_whole_and_each_side_above_the_share() -> None:
    from trainer.dataset import reframe_box

    h, w = 400, 600
    mask = np.zeros((h, w), np.float32)
    mask[150:390, 40:160] = 1.0  # a runner near the left edge
    sizes = []
    for seed in range(200):
        x0, y0, x1, y1 = reframe_box((h, w), np.random.default_rng(seed), 0.5, mask)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x0 <= 40 and x1 >= 160 and y0 <= 150 and y1 >= 390, (x0, y0, x1, y1)
        assert x1 - x0 >= 0.5 * w - 1 and y1 - y0 >= 0.5 * h - 1
        sizes.append((x1 - x0) / w)
        free = reframe_box((h, w), np.random.default_rng(seed), 0.5)
        assert free[2] - free[0] >= 0.5 * w - 1 and free[3] - free[1] >= 0.5 * h - 1
    assert min(sizes) < 0.6 and max(sizes) > 0.9  # the whole range of framings is drawn
    with pytest.raises(ValueError, match="reframe"):
        reframe_box((h, w), np.random.default_rng(0), 0.0)


def test_reframed_examples_crop_half_the_photos_and_record_the_crop(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from trainer.dataset import Job, make_example

    src = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(src)
    spec = InputSpec(size=64, resize="stretch")
    crops = []
    for seed in range(16):
        job = Job("train", SHARP, SourceImage(src, SHARP, "g"), "clean", seed, f"{seed}.png", reframe=0.5)
        row = make_example(job, tmp_path / "out", spec, None)
        assert not row.error and (tmp_path / "out" / row.file).is_file()
        params = json.loads(row.params)
        if "reframe_x0" in params:
            side = params["reframe_x1"] - params["reframe_x0"]
            assert 0.49 <= side <= 1.0 and params["reframe_y1"] - params["reframe_y0"] >= 0.49
            crops.append(side)
    assert 3 <= len(crops) <= 13  # about half (REFRAME_SHARE) of the examples
    plain = make_example(Job("train", SHARP, SourceImage(src, SHARP, "g"), "clean", 3, "p.png"), tmp_path / "out",
                         spec, None)
    assert "reframe_x0" not in json.loads(plain.params)


def test_floored_jobs_synthesise_blur_at_or_above_the_floor(tmp_path: Path) -> None:
    from PIL import Image

    from trainer.dataset import Job, make_example

    src = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 450, 3), dtype=np.uint8)).save(src)
    spec = InputSpec(size=64, resize="stretch")
    lo, hi = strength_range("defocus")
    got = []
    for seed in range(6):
        job = Job("train", "defocused_blurred", SourceImage(src, SHARP, "g"), "defocus", seed, f"{seed}.png",
                  min_strength_px=lo + 0.8 * (hi - lo))
        row = make_example(job, tmp_path / "out", spec, None)
        assert not row.error and (tmp_path / "out" / row.file).is_file()
        got.append(row.strength_px)
    assert min(got) >= lo + 0.8 * (hi - lo) - 0.01 and max(got) <= hi
    free = make_example(Job("train", "defocused_blurred", SourceImage(src, SHARP, "g"), "defocus", 1, "f.png"),
                        tmp_path / "out", spec, None)
    assert lo <= free.strength_px <= hi


@pytest.mark.usefixtures("_keep_signal_handlers")
def test_shipped_checks_its_options_before_touching_the_work_folder(tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    (work / "dataset").mkdir(parents=True)
    keep = work / "dataset" / "keep.txt"
    keep.write_text("x")
    base = ["shipped", "--shared", str(tmp_path), "--work", str(work), "--model-out", str(tmp_path / "m")]
    assert train_main([*base, "--weights", str(tmp_path / "missing.pt")]) == 1
    assert "weights file not found" in capsys.readouterr().err
    assert train_main([*base, "--mix", "blurry=3"]) == 1
    assert "--mix" in capsys.readouterr().err
    assert train_main([*base, "--dense-weight", "-1"]) == 1
    assert "--dense-weight must be >= 0" in capsys.readouterr().err
    assert train_main([*base, "--reframe", "1.5"]) == 1
    assert "--reframe must be" in capsys.readouterr().err
    assert keep.exists()


@pytest.mark.usefixtures("_keep_signal_handlers")
@pytest.mark.parametrize("dense", [None, "0.5"])
def test_shipped_passes_patience_seed_and_dense_weight_to_its_trainer(tmp_path: Path, monkeypatch, dense) -> None:
    import trainer.dense
    import trainer.train
    from tests.toydata import write_class_folders
    from trainer.dataset import PrepareOptions, prepare

    work = tmp_path / "work"
    prepare(write_class_folders(tmp_path / "src", per_class=2), work / "dataset",
            PrepareOptions(spec=InputSpec(size=32, resize="stretch"), workers=1))
    seen: dict[str, object] = {}

    def fake(name: str):
        def run(dataset, work_dir, config, *args, **kwargs):
            seen[name] = config
            raise RuntimeError("stop here")
        return run

    monkeypatch.setattr(trainer.dense, "train_dense", fake("dense"))
    monkeypatch.setattr(trainer.train, "train_model", fake("ultralytics"))
    argv = ["shipped", "--shared", str(tmp_path), "--work", str(work), "--model-out", str(tmp_path / "m"),
            "--resume", "--hours", "0", "--epochs", "30", "--patience", "7", "--precision", "fp32", "--train-seed", "3"]
    assert train_main([*argv, *(["--dense-weight", dense] if dense else [])]) == 1
    if dense:
        cfg = seen["dense"]
        assert (cfg.dense_weight, cfg.patience, cfg.epochs, cfg.time_hours, cfg.precision, cfg.seed) == (
            0.5, 7, 30, None, "fp32", 3)
        assert "ultralytics" not in seen
    else:
        cfg = seen["ultralytics"]
        assert (cfg.patience, cfg.epochs, cfg.precision, cfg.seed) == (7, 30, "fp32", 3)
        assert "dense" not in seen


@pytest.mark.usefixtures("_keep_signal_handlers")
def test_shipped_prepare_only_writes_the_dataset_and_trains_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    """`--prepare-only` (build_model.sh makes the stage-2 dataset beside a training run): the dataset is written,
    no training starts, and a later `--resume` run trains on exactly that dataset."""
    import trainer.shipped
    import trainer.train
    from tests.toydata import write_class_folders
    from trainer.dataset import PrepareOptions, prepare, read_manifest

    src = write_class_folders(tmp_path / "src", per_class=2)

    def build(shared, out_dir, spec, *args, **kwargs):
        return prepare(src, out_dir, PrepareOptions(spec=spec, workers=1))

    def no_training(*args, **kwargs):
        raise AssertionError("--prepare-only must not train")

    monkeypatch.setattr(trainer.shipped, "build_shipped_dataset", build)
    monkeypatch.setattr(trainer.train, "train_model", no_training)
    work = tmp_path / "work"
    base = ["shipped", "--shared", str(tmp_path), "--work", str(work), "--model-out", str(tmp_path / "m"),
            "--imgsz", "32"]
    assert train_main([*base, "--prepare-only"]) == 0
    rows = read_manifest(work / "dataset")
    assert rows and all((work / "dataset" / r.file).is_file() for r in rows if r.file)
    assert not (tmp_path / "m").exists() and not (work / "runs").exists()
    seen = []

    def train(dataset, *args, **kwargs):
        seen.append(read_manifest(dataset))
        raise RuntimeError("stop here")

    monkeypatch.setattr(trainer.train, "train_model", train)
    assert train_main([*base, "--resume"]) == 1
    assert seen == [rows]
    capsys.readouterr()


def test_evaluate_triplets_reads_the_shared_triplets_by_their_suffix(tmp_path: Path, capsys) -> None:
    import json

    from tests.toydata import blurred, scene

    shared = tmp_path / "shared"
    folder = shared / "kwentar" / "real_triplets"
    folder.mkdir(parents=True)
    for suffix, label in (("S", SHARP), ("F", "defocused_blurred"), ("M", "motion_blurred")):
        img = scene(7, (300, 200))
        (img if label == SHARP else blurred(img, label)).save(folder / f"1_CAM_{suffix}.jpg")
    out = tmp_path / "triplets.json"
    models = str(Path(__file__).resolve().parents[2] / "models")
    assert train_main(["evaluate", models, str(shared), "--split", "triplets", "--json", str(out)]) == 0
    preds = json.loads(out.read_text())["predictions"]
    assert sorted((Path(p["path"]).name, p["label"]) for p in preds) == [
        ("1_CAM_F.jpg", "defocused_blurred"), ("1_CAM_M.jpg", "motion_blurred"), ("1_CAM_S.jpg", SHARP)]
    assert all(p["top_class"] in p["probabilities"] for p in preds)
    capsys.readouterr()
    assert train_main(["evaluate", models, str(tmp_path / "nothing"), "--split", "triplets"]) == 1
    assert "no real triplets" in capsys.readouterr().err


def test_evaluate_whole_frame_reports_the_network_without_the_quadrant_check(tmp_path: Path, capsys) -> None:
    import json

    from engine import EngineConfig, load_classifier
    from tests.toydata import scene

    shared = tmp_path / "shared"
    folder = shared / "kwentar" / "real_triplets"
    folder.mkdir(parents=True)
    for suffix in ("S", "F", "M"):
        scene(1, (600, 400)).save(folder / f"2_CAM_{suffix}.jpg", quality=95)  # a smooth scene: the quadrants are looked at
    models = Path(__file__).resolve().parents[2] / "models"
    reports = {}
    for name, extra in (("checked", []), ("whole", ["--whole-frame"])):
        out = tmp_path / f"{name}.json"
        assert train_main(["evaluate", str(models), str(shared), "--split", "triplets", "--json", str(out), *extra]) == 0
        reports[name] = {Path(p["path"]).name: p["probabilities"] for p in json.loads(out.read_text())["predictions"]}
    capsys.readouterr()
    for name, config in (("checked", None), ("whole", EngineConfig.whole_frame())):
        engine = load_classifier(models, config)
        for file, probs in reports[name].items():
            assert probs == pytest.approx(engine.classify(folder / file).probabilities, abs=1e-6)
    a, b = (np.array(list(reports[k]["2_CAM_S.jpg"].values())) for k in ("checked", "whole"))
    assert not np.allclose(a, b, atol=1e-3)
