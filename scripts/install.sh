#!/usr/bin/env bash
# Install BlurFlag into ./.venv (Python 3.11). `--train` adds the trainer (torch, ultralytics) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if [ "${1:-}" = "--train" ]; then
  # torch/torchvision are pinned in pyproject's `train` extra (a pair that imports together on Linux x86-64).
  "${PIP[@]}" -e '.[train,test]'
  # ultralytics depends on opencv-python, whose cv2 points Qt at its own plugins; swap in the headless build.
  # (Training runs in its own process, but nothing GUI-related should ever find that cv2.)
  if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -y -q opencv-python
    "${PIP[@]}" --force-reinstall --no-deps "opencv-python-headless>=4.9"
  fi
else
  "${PIP[@]}" -e .
fi
echo "BlurFlag installed in .venv ($(.venv/bin/blurflag --version))"
