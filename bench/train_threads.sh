#!/usr/bin/env bash
# Training throughput on this machine: one YOLOv8n-cls run with two torch threads, then two one-thread runs side by
# side (how scripts/build_model.sh PARALLEL=1 trains), EPOCHS epochs each on the same prepared dataset. Prints the
# wall time of each (startup and validation included) and images trained per second. Needs the train extra.
#
#   bash bench/train_threads.sh DATASET [EPOCHS]     # e.g. WORK/ship/dataset of build_model.sh, 3 epochs
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "$1")
EPOCHS=${2:-3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
N=$(find "$DATA/train" -name '*.png' | wc -l)
run() { .venv/bin/blurflag-train train "$DATA" --work "$W/$1" --epochs "$EPOCHS" --threads "$2" > "$W/$1.log" 2>&1 \
  || { tail -20 "$W/$1.log"; return 1; }; }
t0=$SECONDS
run alone 2
alone=$((SECONDS - t0))
t0=$SECONDS
run side_a 1 & a=$!
run side_b 1 & b=$!
wait $a
wait $b
side=$((SECONDS - t0))
echo "$N training images, $EPOCHS epochs per run"
echo "one run, 2 threads:               $alone s  ($((N * EPOCHS / alone)) img/s)"
echo "two 1-thread runs side by side:   $side s  ($((2 * N * EPOCHS / side)) img/s together)"
echo "side by side / alone, images per second: $(awk -v a="$alone" -v s="$side" 'BEGIN { printf "%.2f", 2 * a / s }')"
