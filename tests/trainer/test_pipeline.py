"""The trainer end to end on a tiny generated dataset: real prepare, training, export, evaluation."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine import load_classifier
from engine.preprocess import TRAIN_REDUCING_GAP, InputSpec, load_model_input
from tests.toydata import write_class_folders
from trainer.dataset import PrepareOptions, discover, infer_groups, prepare, split_by_group

REPO = Path(__file__).resolve().parents[2]
HAS_TRAIN = all(__import__("importlib").util.find_spec(m) for m in ("torch", "ultralytics", "onnx"))
needs_train = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")


def test_plan_layout_and_groups(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "Portrait Photos Running event and bib numbers").mkdir(parents=True)
    (src / "Defocused object in portrait").mkdir()
    (src / "unrelated").mkdir()
    from tests.toydata import scene

    for i in range(4):
        scene(i).save(src / "Portrait Photos Running event and bib numbers" / f"DSC_{100 + i}.jpg")
        scene(i + 10).save(src / "Defocused object in portrait" / f"DSC_{500 + i * 10}.jpg")
    scene(0).save(src / "unrelated" / "x.jpg")
    items = discover(src)
    assert Counter(i.label for i in items) == {"sharp": 4, "defocused_object_portrait": 4}
    groups = infer_groups([i.path for i in items])
    sharp_groups = {groups[i.path] for i in items if i.label == "sharp"}
    portrait_groups = {groups[i.path] for i in items if i.label != "sharp"}
    assert len(sharp_groups) == 1  # DSC_100..103: one burst
    assert len(portrait_groups) == 4  # numbers 10 apart: separate shots


def test_prepare_splits_by_group_before_balancing(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", per_class=10)
    # make sharp the big class so the others get balanced
    from tests.toydata import scene

    for i in range(10, 30):
        scene(500 + i).save(src / "sharp" / f"IMG_{i * 10:04d}.jpg")
    out = tmp_path / "ds"
    rows = prepare(src, out, PrepareOptions(spec=InputSpec(size=48, resize="stretch"), workers=1))
    ok = [r for r in rows if not r.error]
    assert len(ok) == len(rows)
    train_groups = {r.group for r in ok if r.split == "train"}
    val_groups = {r.group for r in ok if r.split == "val"}
    assert train_groups and val_groups and not (train_groups & val_groups)
    val_sources = {r.source for r in ok if r.split == "val"}
    assert all(r.source not in val_sources for r in ok if r.kind == "augmented")
    assert all(r.split == "train" for r in ok if r.kind == "augmented")
    counts = Counter(r.label for r in ok if r.split == "train")
    assert len(set(counts.values())) == 1, counts  # balanced by augmentation
    for r in ok:
        assert (out / r.file).exists()
    assert json.loads((out / "dataset.json").read_text())["imgsz"] == 48


def test_split_is_deterministic_and_near_80_20(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", per_class=20)
    items = discover(src)
    a = split_by_group(items, 0.2, seed=3)
    b = split_by_group(items, 0.2, seed=3)
    assert [i.path for i in a[1]] == [i.path for i in b[1]]
    assert 0.1 <= len(a[1]) / len(items) <= 0.3


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(tmp_path / "home")  # anything ultralytics writes outside the work folder would land here
    env["PYTHONPATH"] = str(REPO)
    return env


def _no_network_prefix() -> list[str]:
    """Run without any network interface where the platform allows it, so a hidden download fails loudly."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0 and subprocess.run([unshare, "-n", "true"]).returncode == 0:
        return [unshare, "-n"]
    return []


@needs_train
@pytest.mark.slow
def test_run_end_to_end_offline(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", per_class=12)
    work, model_out = tmp_path / "work", tmp_path / "model"
    cmd = [*_no_network_prefix(), sys.executable, "-m", "trainer.cli", "run", str(src), "--work", str(work),
           "--model-out", str(model_out), "--epochs", "3", "--imgsz", "64", "--batch", "8", "--workers", "1", "--events"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_isolated_env(tmp_path), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = _events(proc.stdout)
    assert [e["step"] for e in events if e["event"] == "step"] == ["prepare", "train", "export", "evaluate"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["loss"] is not None for e in epochs)
    metrics = next(e for e in events if e["event"] == "metrics")
    assert set(metrics["recall"]) == {"sharp", "defocused_object_portrait", "defocused_blurred", "motion_blurred"}
    assert 0.0 <= metrics["sharp_false_positive_rate"] <= 1.0
    assert events[-1]["event"] == "done"
    assert not (tmp_path / "home" / ".config" / "Ultralytics").exists()  # private settings folder only
    assert not list(src.rglob("*.cache"))  # nothing written into the user's source folders
    # the exported folder is a model the engine runs, with ONNX/PyTorch parity through the engine's preprocessing
    clf = load_classifier(model_out)
    assert clf.spec.size == 64 and clf.spec.resize == "stretch"
    assert clf.spec.reducing_gap == TRAIN_REDUCING_GAP  # recorded at export, so the engine resizes as training did
    from trainer.export import torch_probabilities

    images = sorted(src.rglob("*.jpg"))[::5]
    batch = np.stack([load_model_input(p, clf.spec) for p in images])
    diff = np.abs(clf.predict(batch) - torch_probabilities(work / "runs" / "train" / "weights" / "best.pt", batch))
    assert diff.max() <= 1e-3
    report = json.loads((model_out / "evaluation.json").read_text())
    assert report["count"] > 0 and len(report["confusion"]) == 4


@needs_train
@pytest.mark.slow
def test_run_cancels_cleanly_on_sigterm(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", per_class=8)
    cmd = [sys.executable, "-m", "trainer.cli", "run", str(src), "--work", str(tmp_path / "w"), "--model-out",
           str(tmp_path / "m"), "--epochs", "200", "--imgsz", "48", "--batch", "8", "--workers", "1", "--events"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=_isolated_env(tmp_path), cwd=REPO)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if '"event": "epoch"' in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert '"cancelled"' in rest
    assert not (tmp_path / "m" / "blurflag.onnx").exists()


def test_prepare_stops_when_asked_and_leaves_no_manifest(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", per_class=10)
    out = tmp_path / "ds"
    stop = threading.Event()
    seen: list[str] = []

    def progress(message: str) -> None:
        seen.append(message)
        stop.set()  # at the first progress report

    options = PrepareOptions(spec=InputSpec(size=32, resize="stretch"), workers=1, balance=False,
                             synth={"motion_blurred": 20})
    with pytest.raises(InterruptedError, match="cancelled after"):
        prepare(src, out, options, progress, stop)
    assert len(seen) == 1 and seen[0].startswith("prepared ")
    made = list(out.rglob("*.png"))  # the model-ready examples
    assert made and len(made) < 40 + 20  # stopped early: 40 photos and 20 synthetic examples were planned
    assert not (out / "manifest.csv").exists() and not (out / "dataset.json").exists()  # never taken for a dataset
    assert len(list(src.rglob("*.jpg"))) == 40  # the sources are untouched


def test_prepare_cancels_on_sigterm_with_worker_processes(tmp_path: Path) -> None:
    """`blurflag-train prepare` (and so the trainer tab's Stop) ends within seconds, not after the whole dataset."""
    src = write_class_folders(tmp_path / "src", per_class=40)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "trainer.cli", "prepare", str(src), str(out), "--imgsz", "64", "--workers", "2",
           "--synth", "motion_blurred=400", "--synth", "defocused_blurred=400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_isolated_env(tmp_path), cwd=REPO)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("prepared "):
            break
    else:
        pytest.fail("no progress line before the end")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "cancelled" in rest
    assert not (out / "manifest.csv").exists()
    made = list(out.rglob("*.png"))
    assert made and len(made) < 160 + 800 // 2, len(made)  # far from the whole plan


def test_manifest_is_csv_with_groups(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", per_class=5)
    out = tmp_path / "ds"
    prepare(src, out, PrepareOptions(spec=InputSpec(size=32, resize="stretch"), workers=1, balance=False))
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"split", "label", "file", "source", "group", "kind"} <= set(rows[0])


def test_extra_examples_are_merged_without_touching_the_sources(tmp_path: Path) -> None:
    from trainer.cli import _merge_sources

    src = write_class_folders(tmp_path / "src", per_class=3)
    extra = tmp_path / "extra" / "motion_blurred"
    extra.mkdir(parents=True)
    from tests.toydata import blurred, scene

    for i in range(2):
        blurred(scene(700 + i), "motion_blurred").save(extra / f"mine_{i}.jpg")
    before = sorted(p.name for p in (tmp_path / "extra").rglob("*"))
    merged = _merge_sources(src, [tmp_path / "extra"], tmp_path / "work" / "source")
    items = discover(merged)
    assert Counter(i.label for i in items)["motion_blurred"] == 5
    assert sorted(p.name for p in (tmp_path / "extra").rglob("*")) == before


@pytest.mark.parametrize("kind", ["original", "augmented", "defocus"])
def test_a_file_pillow_cannot_identify_is_one_failed_example_even_under_ultralytics_patch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from PIL import Image

    from tests.toydata import open_as_ultralytics_patches_it
    from trainer.dataset import Job, SourceImage, make_example

    monkeypatch.setattr(Image, "open", open_as_ultralytics_patches_it(Image.open))  # as once training has started
    bad = tmp_path / "sharp" / "notes.jpg"
    bad.parent.mkdir()
    bad.write_text("not a photo")
    job = Job("train", "sharp", SourceImage(bad, "sharp", "g"), kind, seed=1, out_name="x.png")
    row = make_example(job, tmp_path / "ds", InputSpec(size=64, resize="stretch"), None)
    assert row.error and not row.file, row
    assert not (tmp_path / "ds" / "train").exists()
