#!/usr/bin/env bash
# Install BlurFlag's trainer (torch, ultralytics) into its own Python environment, where the app finds it.
#
#   ./install-trainer.sh                      # online once: downloads about 3 GB on Linux (torch's CUDA wheels)
#   ./install-trainer.sh --download DIR       # on a machine with internet: put every wheel into DIR ...
#   ./install-trainer.sh --wheelhouse DIR     # ... then install from DIR with no network at all
#   ./install-trainer.sh --uninstall          # remove the trainer environment (your photos and models stay)
# Options: --prefix DIR (default: <BlurFlag data folder>/trainer, which the app looks in), --python PYTHON (3.11).
#
# Run it from the unpacked app folder (it installs the trainer wheel shipped there, the same version as the app)
# or from a checkout (it builds the wheel from the source). Training itself never needs the network.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install-trainer: $*" >&2; exit 1; }

case "$(uname -s)" in
  Darwin) DATA_DIR="$HOME/Library/Application Support/BlurFlag" ;;
  *) DATA_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/BlurFlag" ;;
esac
PREFIX="$DATA_DIR/trainer"
PYTHON=""; WHEELHOUSE=""; DOWNLOAD=""; UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a folder}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a folder}; shift 2 ;;
    --download) DOWNLOAD=${2:?--download needs a folder}; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac

if [ "$UNINSTALL" = 1 ]; then
  if [ -f "$PREFIX/pyvenv.cfg" ]; then rm -rf "$PREFIX"; echo "Removed the trainer environment $PREFIX."
  else echo "No trainer environment at $PREFIX."; fi
  exit 0
fi

# A Python 3.11 (the trainer's torch pin and BlurFlag's requires-python).
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      PYTHON=$cand; break
    fi
  done
fi
[ -n "$PYTHON" ] || die "needs Python 3.11 (Debian/Ubuntu: apt install python3.11 python3.11-venv; elsewhere python.org), or --python PATH"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' || die "$PYTHON is not a Python 3.11 with venv"

# What to install: the wheel and requirements shipped beside this script, or a checkout's source.
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
if compgen -G "$HERE/trainer/blurflag-*.whl" >/dev/null && [ -f "$HERE/trainer/requirements.txt" ]; then
  WHEEL=$(ls "$HERE"/trainer/blurflag-*.whl | head -n 1)
  REQS="$HERE/trainer/requirements.txt"
elif [ -f "$HERE/../pyproject.toml" ] && [ -d "$HERE/../trainer" ]; then
  SRC=$(cd "$HERE/.." && pwd)
  REQS="$WORK/requirements.txt"
  "$PYTHON" - "$SRC/pyproject.toml" "$REQS" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = [r for r in project["dependencies"] if not r.lower().startswith("pyside6")] + project["optional-dependencies"]["train"]
open(sys.argv[2], "w").write("\n".join(reqs) + "\n")
EOF
  WHEEL=""
else
  die "no trainer wheel in $HERE/trainer and no BlurFlag source around $HERE"
fi

PIP_OPTS=(--disable-pip-version-check --no-input)
[ -z "$WHEELHOUSE" ] || PIP_OPTS+=(--no-index --find-links "$WHEELHOUSE")

if [ -n "$DOWNLOAD" ]; then
  mkdir -p "$DOWNLOAD"
  "$PYTHON" -m pip download "${PIP_OPTS[@]}" -d "$DOWNLOAD" -r "$REQS" "opencv-python-headless>=4.9" "setuptools>=68" pip
  [ -n "$WHEEL" ] && cp "$WHEEL" "$DOWNLOAD/"
  echo "Wheels for this platform are in $DOWNLOAD; on the offline machine: $0 --wheelhouse $DOWNLOAD"
  exit 0
fi

# Enough room first: torch alone is several GB, and a disk that fills halfway through leaves only a failed install.
# BLURFLAG_TRAINER_MIN_FREE_MB overrides the estimate (the venv takes about 5.6 GB on Linux, 1 GB on macOS).
case "$(uname -s)" in Darwin) NEED_MB=2000 ;; *) NEED_MB=7000 ;; esac
NEED_MB=${BLURFLAG_TRAINER_MIN_FREE_MB:-$NEED_MB}
AT=$(dirname "$PREFIX"); while [ ! -d "$AT" ]; do AT=$(dirname "$AT"); done
FREE_MB=$(df -Pk "$AT" | awk 'NR == 2 { print int($4 / 1024) }')
[ "${FREE_MB:-0}" -ge "$NEED_MB" ] || die "needs about $NEED_MB MB free for $PREFIX; $AT has $FREE_MB MB (free some space or pass --prefix on a larger disk)"

# Build beside the target and swap in only a verified environment: a failed or interrupted install never
# replaces a working trainer, and the app never finds a half-installed one.
PARTIAL="$PREFIX.partial"
rm -rf "$PARTIAL"
mkdir -p "$(dirname "$PREFIX")"
"$PYTHON" -m venv "$PARTIAL"
VPY="$PARTIAL/bin/python"; [ -x "$VPY" ] || VPY="$PARTIAL/Scripts/python.exe"
echo "Installing the trainer into $PREFIX (this takes a few minutes)..."
"$VPY" -m pip install "${PIP_OPTS[@]}" -q -r "$REQS"
# ultralytics depends on opencv-python, whose cv2 points Qt at its own plugins; keep only the headless build.
if "$VPY" -m pip show -q opencv-python >/dev/null 2>&1; then
  "$VPY" -m pip uninstall -y -q opencv-python
  "$VPY" -m pip install "${PIP_OPTS[@]}" -q --force-reinstall --no-deps "opencv-python-headless>=4.9"
fi
if [ -n "$WHEEL" ]; then
  "$VPY" -m pip install "${PIP_OPTS[@]}" -q --no-deps "$WHEEL"
else
  "$VPY" -m pip install "${PIP_OPTS[@]}" -q --no-deps "$SRC"
fi
# The check the app makes, and a real import of the training stack (torch and torchvision must load together).
"$VPY" -I -c 'import trainer, sys; ok, msg = trainer.available(); print(msg); sys.exit(not ok)'
YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$WORK/ultralytics" "$VPY" -I -c 'import torch, torchvision, ultralytics, onnx, trainer.cli; print("torch", torch.__version__, "torchvision", torchvision.__version__, "ultralytics", ultralytics.__version__)'
rm -rf "$PREFIX"
mv "$PARTIAL" "$PREFIX"
echo "Trainer installed in $PREFIX. BlurFlag's Trainer tab and blurflag-train find it there."
