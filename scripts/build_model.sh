#!/usr/bin/env bash
# Rebuild the bundled model from ../shared/data on a 2-core CPU machine (about 1 h 45 min wall time).
# Re-running it after an interruption resumes: masks are cached, the dataset is reused, and training
# continues from the last checkpoint in the work folder.
#
#   bash scripts/build_model.sh [SHARED_DATA_DIR] [WORK_DIR]
#
# Then review WORK/model (and `blurflag-train card WORK`) and copy WORK/model/{blurflag.onnx,class_names.json}
# into models/ to ship it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=$(realpath "${1:-../shared/data}")
WORK=$(realpath -m "${2:-$HOME/blurflag-model-work}")
HOURS=${HOURS:-1.5}
mkdir -p "$WORK"
[ -x .venv/bin/blurflag-train ] && .venv/bin/python -c "import ultralytics" 2>/dev/null || bash scripts/install.sh --train

# 1. Person masks for the race photos (subject/background synthesis). MediaPipe 0.10.14 carries its
#    segmentation models inside the wheel (no download at run time) but needs protobuf<5, which clashes
#    with onnx in the training venv, so it gets a small venv of its own.
MPVENV="$WORK/mediapipe-venv"
if [ ! -x "$MPVENV/bin/python" ]; then
  python3 -m venv "$MPVENV"
  "$MPVENV/bin/pip" install -q --no-deps mediapipe==0.10.14
  "$MPVENV/bin/pip" install -q "protobuf>=4.25.3,<5" absl-py attrs flatbuffers matplotlib numpy opencv-python-headless pillow
fi
mapfile -t PHOTOS < <(find "$SHARED/race" "$SHARED/race_misc" "$SHARED/bokeh" -iname '*.jpg' | sort)
"$MPVENV/bin/python" trainer/masks.py --out "$WORK/masks" "${PHOTOS[@]}"

# 2-4. Dataset (split by group, whole races held out), time-boxed training, export with parity check, evaluation.
RESUME=()
[ -f "$WORK/ship/dataset/manifest.csv" ] && RESUME=(--resume)
.venv/bin/blurflag-train shipped --shared "$SHARED" --work "$WORK/ship" --model-out "$WORK/ship/model" \
  --mask-dir "$WORK/masks" --hours "$HOURS" --epochs 100 "${RESUME[@]}" | tee -a "$WORK/build.log"
.venv/bin/blurflag-train card "$WORK/ship" > "$WORK/ship/card_metrics.md"
echo "model in $WORK/ship/model; metrics in $WORK/ship/card_metrics.md"
