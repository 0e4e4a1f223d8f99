"""The shipped-model recipe: split by group, job planning, and the fine-tuning options of `blurflag-train shipped`."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from engine.model import SHARP
from trainer.cli import main as train_main
from trainer.dataset import SourceImage
from trainer.shipped import TRAIN_MIX, parse_gap, parse_mix, plan_shipped_jobs


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


@pytest.fixture
def _keep_signal_handlers():
    """`blurflag-train` installs SIGINT/SIGTERM handlers; give pytest its own back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


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
    assert keep.exists()
