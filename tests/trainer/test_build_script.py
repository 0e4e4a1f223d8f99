"""scripts/build_model.sh picks its default schedule from the CPU (bfloat16: side by side, shorter fine-tuning)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

HAS_TRAIN = all(importlib.util.find_spec(m) for m in ("torch", "ultralytics"))
pytestmark = pytest.mark.skipif(not HAS_TRAIN, reason="needs the train extra (CI installs it)")
REPO = Path(__file__).resolve().parents[2]


def _schedule(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARALLEL", "HOURS", "HOURS2", "EPOCHS2", "PRE_HOURS2",
                                                                 "TEXTURED")}
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
                       "TEXTURED": "1", "bf16": "1"}
    else:   # the shipped model's float32 schedule, one network after the other
        assert got == {"PARALLEL": "0", "HOURS": "0.95", "HOURS2": "0.7", "EPOCHS2": "120", "PRE_HOURS2": "0.5",
                       "TEXTURED": "1", "bf16": "0"}


def test_overrides_win_over_the_cpu_default(tmp_path: Path) -> None:
    got = _schedule(tmp_path, PARALLEL="0", HOURS2="0.7", EPOCHS2="120", PRE_HOURS2="0.5", TEXTURED="0")
    assert (got["PARALLEL"], got["HOURS2"], got["EPOCHS2"], got["PRE_HOURS2"], got["TEXTURED"]) == (
        "0", "0.7", "120", "0.5", "0")
