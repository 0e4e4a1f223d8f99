#!/usr/bin/env bash
# Make (once) the small venv that runs trainer/masks.py, and print its python.
# MediaPipe 0.10.14 carries its segmentation models inside the wheel (no download at run time) but needs
# protobuf<5, which clashes with onnx in the training venv, so it gets a venv of its own.
#
#   PY=$(bash scripts/mediapipe_venv.sh DIR)
set -euo pipefail
MPVENV=$(realpath -m "$1")
if [ ! -x "$MPVENV/bin/python" ]; then
  python3 -m venv "$MPVENV" >&2
  "$MPVENV/bin/pip" install -q --no-deps mediapipe==0.10.14 >&2
  "$MPVENV/bin/pip" install -q "protobuf>=4.25.3,<5" absl-py attrs flatbuffers matplotlib numpy opencv-python-headless \
    pillow >&2
fi
echo "$MPVENV/bin/python"
