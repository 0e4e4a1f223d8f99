"""Training throughput of YOLOv8n-cls on this CPU, per training setting, on one prepared dataset.

Each setting trains EPOCHS epochs from scratch in a fresh process with all cores, one after the other:

* `before`: how the shipped model was trained: float32, images decoded from PNG every epoch, NCHW tensors;
* `fp32`:   float32 with the decoded images cached in RAM and channels-last tensors (TrainConfig's defaults);
* `bf16`:   the same with bfloat16 autocast (what `--precision auto` picks on CPUs with AMX / AVX512-BF16).

Prints each run's wall time (startup and float32 validation included), the median epoch from ultralytics'
results.csv, training images per second, and the speed-up over `before`. Needs the train extra.

    .venv/bin/python bench/train_speed.py WORK/ship/dataset [--epochs 3] [--only bf16 ...]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "before": {"precision": "fp32", "cache_ram_bytes": 0, "channels_last": False},
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
}
CHILD = """
import sys
from pathlib import Path
from trainer.train import TrainConfig, train_model
train_model(Path(sys.argv[1]), Path(sys.argv[2]), TrainConfig(epochs=int(sys.argv[3]), **eval(sys.argv[4])))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from trainer.train import cpu_has_native_bf16

    n = sum(1 for _ in (args.dataset / "train").rglob("*.png"))
    print(f"{n} training images, {args.epochs} epochs per run; native bfloat16 on this CPU: {cpu_has_native_bf16()}")
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            work = Path(tmp) / name
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-c", CHILD, str(args.dataset.resolve()), str(work),
                                   str(args.epochs), repr(SETTINGS[name])], cwd=root, capture_output=True, text=True,
                                  check=False)
            wall = time.monotonic() - t0
            if done.returncode:
                print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
                return done.returncode
            with open(work / "runs" / "train" / "results.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            t = [0.0] + [float(r["time"]) for r in rows]
            epoch = statistics.median(b - a for a, b in itertools.pairwise(t))
            results[name] = (wall, epoch)
            base = results.get("before")
            ratio = f", {base[1] / epoch:.2f}x before" if base else ""
            print(f"{name:7s} {wall:6.0f} s wall, median epoch {epoch:5.1f} s ({n / epoch:4.0f} img/s){ratio}, "
                  f"last val top-1 {float(rows[-1]['metrics/accuracy_top1']):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
