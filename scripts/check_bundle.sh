#!/usr/bin/env bash
# CI check of the packaged app, as a user gets it: unpack the archive from scripts/build_bundle.sh, then
#   1. the frozen `blurflag --self-test` and `blurflag-app --self-test` pass with networking unavailable to them
#      (a network namespace without interfaces: a hidden download attempt fails);
#   2. the frozen app starts offscreen (no network either), opens its window, watches a folder and classifies a
#      photo dropped into it, and a broken file gets an error of its own (read back from its result database);
#   3. with --xcb: the same window opens on an X server (Xvfb) through the bundled xcb plugin and libraries;
#   4. with --trainer PYTHON|install: a tiny training run through the packaged `blurflag-train`, offline, and the
#      frozen `blurflag` classifies with the model it made. `install` runs the archive's install-trainer.sh first.
# It uses nothing from the checkout but the archive (and tests/toydata.py for the tiny training set).
#
#   bash scripts/check_bundle.sh [--xcb] [--trainer PYTHON|install] [ARCHIVE]
# Prints the time to the first window and the bundle size. Exit 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
XCB=0; TRAINER=""; ARCHIVE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --xcb) XCB=1; shift ;;
    --trainer) TRAINER=${2:?--trainer needs a Python or 'install'}; shift 2 ;;
    -*) echo "usage: $0 [--xcb] [--trainer PYTHON|install] [ARCHIVE]" >&2; exit 2 ;;
    *) ARCHIVE=$1; shift ;;
  esac
done
[ -n "$ARCHIVE" ] || ARCHIVE=$(ls -t dist/blurflag-*-linux-*.tar.gz 2>/dev/null | head -n 1)
[ -f "$ARCHIVE" ] || { echo "check_bundle: no archive; run scripts/build_bundle.sh" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "check_bundle: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

tar -C "$WORK" -xzf "$ARCHIVE"
APP=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'blurflag-*' | head -n 1)
[ -x "$APP/blurflag-app" ] && [ -x "$APP/blurflag" ] && [ -x "$APP/blurflag-train" ] || fail "executables missing in $ARCHIVE"
for pkg in torch torchvision ultralytics cv2 matplotlib; do [ ! -e "$APP/_internal/$pkg" ] || fail "$pkg is in the bundle"; done
SIZE_MB=$(du -sm "$APP" | cut -f1)
echo "bundle: $SIZE_MB MB unpacked ($(du -m "$ARCHIVE" | cut -f1) MB archive)"

# No network: a namespace with only a (down) loopback. Root can make one directly; others need user namespaces.
if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then OFFLINE=(unshare -n)
elif unshare -rn true 2>/dev/null; then OFFLINE=(unshare -rn)
else fail "cannot create a network namespace (unshare -n); run as root"
fi
# /proc/net/dev lists the interfaces of the reading process's namespace: only the header and `lo` may be there.
"${OFFLINE[@]}" cat /proc/net/dev | tail -n +3 | grep -qv '^ *lo:' && fail "the namespace has network interfaces"
# The base Python 3.11 for install-trainer.sh, resolved to its real path while HOME is still the real one
# (pyenv-style shims look for their versions under $HOME).
BASE_PY=""
for cand in python3.11 python3; do
  BASE_PY=$("$cand" -c 'import sys; print(sys.executable if sys.version_info[:2] == (3, 11) else "")' 2>/dev/null) || true
  [ -z "$BASE_PY" ] || break
done
# Per-user folders of the frozen app go under $WORK, never into the real home.
export HOME="$WORK/home" XDG_CONFIG_HOME="$WORK/home/.config" XDG_DATA_HOME="$WORK/home/.local/share" \
  XDG_CACHE_HOME="$WORK/home/.cache" XDG_RUNTIME_DIR="$WORK/runtime"
mkdir -p "$HOME" "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"

step "1. frozen self-test, offline"
"${OFFLINE[@]}" "$APP/blurflag" --self-test || fail "blurflag --self-test"
"${OFFLINE[@]}" "$APP/blurflag-app" --self-test > "$WORK/selftest-app.log" || { cat "$WORK/selftest-app.log"; fail "blurflag-app --self-test"; }

# Read the app's result database with the frozen CLI's own Python? It has none; python3's sqlite3 or sqlite3 does.
query() {  # query DB SQL -> rows as text ("" while the database or the row is not there yet)
  if command -v python3 >/dev/null; then
    python3 - "$1" "$2" <<'EOF' 2>/dev/null || true
import sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=1)
for row in con.execute(sys.argv[2]):
    print("|".join("" if v is None else str(v) for v in row))
EOF
  else
    sqlite3 -readonly "$1" "$2" 2>/dev/null || true
  fi
}

# Start the frozen app on platform $1 with a settings file that watches $WORK/<platform>/watch; print its pid.
start_app() {
  local platform=$1 dir=$WORK/$1
  mkdir -p "$dir/watch" "$dir/data"
  cat > "$dir/settings.ini" <<EOF
[watch]
active=true
folders="[\"$dir/watch\"]"
settle_seconds=0.5
EOF
  START_NS=$(date +%s%N)
  QT_QPA_PLATFORM=$platform QT_LOGGING_RULES="qt.widgets.showhide.debug=true" \
    "${OFFLINE[@]}" "$APP/blurflag-app" --settings "$dir/settings.ini" --data-dir "$dir/data" > "$dir/app.log" 2>&1 &
  APP_PID=$!
  PIDS+=("$APP_PID")
}

# Wait until the main window is shown (Qt's show/hide log says so); sets WINDOW_S.
wait_window() {
  local log=$1 deadline=$((SECONDS + 60))
  until grep -q "Setting visibility of MainWindow.* to true" "$log" 2>/dev/null; do
    kill -0 "$APP_PID" 2>/dev/null || { cat "$log"; fail "the app exited before showing its window"; }
    [ $SECONDS -lt $deadline ] || { tail -20 "$log"; fail "no window within 60 s"; }
    sleep 0.05
  done
  WINDOW_S=$(awk -v a="$START_NS" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
}

step "2. frozen app offscreen, offline: window, watch a folder, classify"
start_app offscreen
wait_window "$WORK/offscreen/app.log"
OFFSCREEN_S=$WINDOW_S
echo "time to first window (offscreen): $OFFSCREEN_S s"
SAMPLE=$(ls "$APP"/_internal/resources/samples/motion_blurred__*.jpg | head -n 1)
EXPECTED=motion_blurred
cp "$SAMPLE" "$WORK/offscreen/watch/photo.jpg"
head -c 3000 /dev/urandom > "$WORK/offscreen/watch/broken.jpg"
deadline=$((SECONDS + 90))
while :; do
  DB=$(ls "$WORK"/offscreen/data/results/*.sqlite3 2>/dev/null | head -n 1 || true)
  if [ -n "$DB" ]; then
    GOOD=$(query "$DB" "SELECT top_class, confidence FROM results WHERE path LIKE '%/photo.jpg' AND error IS NULL")
    BAD=$(query "$DB" "SELECT error FROM results WHERE path LIKE '%/broken.jpg' AND error IS NOT NULL")
    [ -n "$GOOD" ] && [ -n "$BAD" ] && break
  fi
  kill -0 "$APP_PID" 2>/dev/null || { cat "$WORK/offscreen/app.log"; fail "the app exited while watching"; }
  [ $SECONDS -lt $deadline ] || { tail -20 "$WORK/offscreen/app.log"; fail "no result for the watched photos within 90 s"; }
  sleep 0.2
done
echo "watched photo.jpg -> $GOOD; broken.jpg -> error: $BAD"
[ "${GOOD%%|*}" = "$EXPECTED" ] || fail "photo.jpg classified ${GOOD%%|*}, expected $EXPECTED"
grep -q "Traceback" "$WORK/offscreen/app.log" && { cat "$WORK/offscreen/app.log"; fail "a Python traceback in the app's output"; }
kill "$APP_PID"; wait "$APP_PID" 2>/dev/null || true

if [ "$XCB" = 1 ]; then
  step "3. frozen app on an X server (Xvfb) through the bundled xcb plugin"
  if ! command -v Xvfb >/dev/null && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends xvfb >/dev/null
  fi
  command -v Xvfb >/dev/null || fail "--xcb needs Xvfb (apt-get install xvfb)"
  Xvfb :77 -screen 0 1600x1000x24 -nolisten tcp > "$WORK/xvfb.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do [ -e /tmp/.X11-unix/X77 ] && break; sleep 0.05; done
  export DISPLAY=:77  # a Unix socket in /tmp/.X11-unix: reachable from the network namespace too
  start_app xcb
  wait_window "$WORK/xcb/app.log"
  echo "time to first window (xcb on Xvfb): $WINDOW_S s"
  grep -qi "could not load the Qt platform plugin\|xcb.*not found" "$WORK/xcb/app.log" && { cat "$WORK/xcb/app.log"; fail "xcb plugin"; }
  kill "$APP_PID"; wait "$APP_PID" 2>/dev/null || true
fi

if [ -n "$TRAINER" ]; then
  step "4. training through the packaged app's blurflag-train, offline"
  if [ "$TRAINER" = install ]; then
    [ -n "$BASE_PY" ] || fail "--trainer install needs Python 3.11"
    "$APP/install-trainer.sh" --python "$BASE_PY" || fail "install-trainer.sh"
    TRAINER_ARGS=()  # the default location the app looks in (under XDG_DATA_HOME, set above)
    TPY="$XDG_DATA_HOME/BlurFlag/trainer/bin/python"
  else
    TRAINER_ARGS=(--trainer-python "$TRAINER")
    TPY=$TRAINER
  fi
  "$APP/blurflag-train" "${TRAINER_ARGS[@]}" --status || fail "the packaged app does not find the trainer"
  "$TPY" -c "import sys; sys.path.insert(0, '$ROOT'); from pathlib import Path; from tests.toydata import write_class_folders; write_class_folders(Path('$WORK/toy'), per_class=6)"
  "${OFFLINE[@]}" "$APP/blurflag-train" "${TRAINER_ARGS[@]}" run "$WORK/toy" --work "$WORK/train" --model-out "$WORK/model" \
    --epochs 2 --imgsz 64 --batch 8 --workers 1 --events > "$WORK/train.log" 2> "$WORK/train.err" \
    || { tail -30 "$WORK/train.err"; fail "training through blurflag-train"; }
  grep -q '"event": "epoch"' "$WORK/train.log" || fail "no epoch events from the trainer"
  [ -f "$WORK/model/blurflag.onnx" ] && [ -f "$WORK/model/class_names.json" ] || fail "the trainer made no model"
  "${OFFLINE[@]}" "$APP/blurflag" classify "$WORK/toy/sharp" --model "$WORK/model" --json > "$WORK/classify.log" \
    || fail "the frozen CLI cannot classify with the trained model"
  echo "trained $(grep -c '"event": "epoch"' "$WORK/train.log") epochs offline; frozen CLI classified $(wc -l < "$WORK/classify.log") photos with it"
  # The MobileNetV2 network from its ImageNet start, which the trainer wheel carries (pyproject.toml package-data).
  "${OFFLINE[@]}" "$APP/blurflag-train" "${TRAINER_ARGS[@]}" run "$WORK/toy" --work "$WORK/train-mn" \
    --model-out "$WORK/model-mn" --network mobilenetv2 --epochs 1 --batch 8 --workers 1 --events \
    > "$WORK/train-mn.log" 2> "$WORK/train-mn.err" \
    || { tail -30 "$WORK/train-mn.err"; tail -3 "$WORK/train-mn.log"; fail "MobileNetV2 training through blurflag-train"; }
  grep -q '"event": "epoch"' "$WORK/train-mn.log" || fail "no epoch events from the MobileNetV2 training"
  "${OFFLINE[@]}" "$APP/blurflag" classify "$WORK/toy/sharp" --model "$WORK/model-mn" --json > "$WORK/classify-mn.log" \
    || fail "the frozen CLI cannot classify with the trained MobileNetV2"
  echo "trained MobileNetV2 from its ImageNet start offline; frozen CLI classified $(wc -l < "$WORK/classify-mn.log") photos with it"
fi

echo "check_bundle: all checks passed (bundle $SIZE_MB MB, first window offscreen $OFFSCREEN_S s)"
