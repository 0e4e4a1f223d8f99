#!/usr/bin/env bash
# Build the offline Linux app: PyInstaller one-folder bundle (build.spec) -> dist/blurflag-<version>-linux-<arch>.tar.gz
#
#   bash scripts/build_bundle.sh            # needs .venv with the `package` extra (installed here if missing)
#   bash scripts/build_bundle.sh --no-apt   # skip installing the Debian libraries (they must be there already)
#
# The archive holds the one-folder app (blurflag-app, blurflag, blurflag-train), a .desktop entry and the icon,
# install-desktop.sh (menu entry for the current user), install-trainer.sh plus the trainer as a wheel
# (optional training, see README "Run BlurFlag"). Prints the bundle size and the archive path.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=.venv/bin/python
[ -x "$PY" ] || { echo "build_bundle: no .venv; run scripts/install.sh first" >&2; exit 2; }

# Libraries Qt's xcb platform plugin (a real X11 desktop) loads beyond glibc. PyInstaller copies the ones it finds
# into the bundle, so they must be installed on the build machine; the GL/EGL/libxcb core and glibc come from the
# user's system (PyInstaller never bundles them: they must match the graphics driver).
XCB_DEBS=(
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render0 libxcb-render-util0
  libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xkb1 libxkbcommon0 libxkbcommon-x11-0
  libx11-6 libx11-xcb1 libfontconfig1 libfreetype6 libdbus-1-3 libglib2.0-0 libegl1 libgl1
)
if [ "${1:-}" != "--no-apt" ] && command -v apt-get >/dev/null; then
  missing=()
  for deb in "${XCB_DEBS[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "build_bundle: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

"$PY" -c "import PyInstaller" 2>/dev/null || "$PY" -m pip install --disable-pip-version-check -q -e '.[package]'
VERSION=$("$PY" -c "import ast,re,pathlib; print(re.search(r'__version__ = \"([^\"]+)\"', pathlib.Path('engine/__init__.py').read_text()).group(1))")
ARCH=$(uname -m)
NAME="blurflag-$VERSION"
DIST=$ROOT/dist
STAGE=$DIST/stage
ARCHIVE=$DIST/$NAME-linux-$ARCH.tar.gz

start=$(date +%s)
rm -rf "$DIST/$NAME" "$STAGE"
# One build at a time, niced: training may be running on the same cores.
nice -n 10 "$PY" -m PyInstaller --noconfirm --log-level WARN --distpath "$DIST" --workpath "$ROOT/build/pyinstaller" build.spec

APPDIR=$DIST/$NAME
# What must be there (and what must not), before anything is packed.
for exe in blurflag-app blurflag blurflag-train; do [ -x "$APPDIR/$exe" ] || { echo "missing $exe" >&2; exit 1; }; done
for lib in libxcb-icccm.so.4 libxcb-keysyms.so.1 libxkbcommon-x11.so.0 libxcb-cursor.so.0; do
  find "$APPDIR/_internal" -name "$lib" | grep -q . || { echo "build_bundle: $lib not collected (xcb plugin would fail)" >&2; exit 1; }
done
# Every bundled library must find its dependencies in the bundle, or be one PyInstaller leaves to the user's
# system on purpose because it must match the graphics stack (GL/EGL, libdrm, libxcb, Wayland client libraries).
SYSTEM_ONLY='lib(E?(Open)?GLX?|drm|xcb|wayland-(client|cursor|egl|server))\.so'
unresolved=$(find "$APPDIR" -type f \( -name '*.so' -o -name '*.so.*' \) -print0 \
  | LD_LIBRARY_PATH="$APPDIR/_internal" xargs -0 -n 50 ldd 2>/dev/null | grep 'not found' | grep -Ev "^\s*$SYSTEM_ONLY" \
  | sort -u || true)
[ -z "$unresolved" ] || { echo "build_bundle: unresolved libraries:"$'\n'"$unresolved" >&2; exit 1; }
for pkg in torch torchvision ultralytics cv2 matplotlib; do
  [ ! -e "$APPDIR/_internal/$pkg" ] || { echo "build_bundle: $pkg must not be in the bundle" >&2; exit 1; }
done

# Optional trainer: this version's wheel (engine + trainer) and the exact requirements of the `train` extra.
mkdir -p "$STAGE/$NAME"
cp -a "$APPDIR/." "$STAGE/$NAME/"
mkdir -p "$STAGE/$NAME/trainer"
"$PY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation -w "$STAGE/$NAME/trainer" . >/dev/null
"$PY" - "$STAGE/$NAME/trainer/requirements.txt" <<'EOF'
"""Write the trainer environment's requirements: the runtime dependencies without Qt, plus the `train` extra."""
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = [r for r in project["dependencies"] if not r.lower().startswith("pyside6")]
reqs += project["optional-dependencies"]["train"]
open(sys.argv[1], "w").write("# BlurFlag trainer environment (from pyproject.toml)\n" + "\n".join(reqs) + "\n")
EOF
install -m 755 scripts/install_trainer.sh "$STAGE/$NAME/install-trainer.sh"
cp resources/icon.png "$STAGE/$NAME/blurflag.png"

# Desktop entry: install-desktop.sh writes it with this folder's absolute path (a .desktop file cannot be relative).
cat > "$STAGE/$NAME/blurflag.desktop" <<EOF
[Desktop Entry]
Type=Application
Name=BlurFlag
GenericName=Blur culling for photos
Comment=Flag blurred race and event photos, offline
Exec="@APPDIR@/blurflag-app"
Icon=blurflag
Terminal=false
Categories=Graphics;Photography;
Keywords=photo;blur;focus;culling;
StartupWMClass=blurflag-app
Version=1.5
X-BlurFlag-Version=$VERSION
EOF
cat > "$STAGE/$NAME/install-desktop.sh" <<'EOF'
#!/bin/sh
# Add BlurFlag to this user's application menu (no root needed); `--uninstall` removes the entry and the icon.
# The app stays where you unpacked it: move the folder first, then run this again.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
ENTRY=$DATA/applications/blurflag.desktop
ICON=$DATA/icons/hicolor/256x256/apps/blurflag.png
if [ "${1:-}" = "--uninstall" ]; then
  rm -f "$ENTRY" "$ICON"
  echo "Removed $ENTRY and $ICON (the app folder $HERE and your data are left alone)."
  exit 0
fi
mkdir -p "$(dirname "$ENTRY")" "$(dirname "$ICON")"
cp "$HERE/blurflag.png" "$ICON"
# Exec="..." quoting escapes \ " ` $ (folders with spaces work); then escape \ & | for sed's replacement.
ESCAPED=$(printf '%s' "$HERE" | sed -e 's/[\\"`$]/\\&/g' -e 's/[\\&|]/\\&/g')
sed "s|@APPDIR@|$ESCAPED|g" "$HERE/blurflag.desktop" > "$ENTRY"
chmod 644 "$ENTRY"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$DATA/applications" || true
echo "BlurFlag added to the application menu ($ENTRY)."
EOF
chmod 755 "$STAGE/$NAME/install-desktop.sh"

rm -f "$ARCHIVE"
tar -C "$STAGE" -czf "$ARCHIVE" "$NAME"
rm -rf "$STAGE"
end=$(date +%s)

echo "bundle: $APPDIR ($(du -sm "$APPDIR" | cut -f1) MB, $(find "$APPDIR" -type f | wc -l) files)"
echo "archive: $ARCHIVE ($(du -m "$ARCHIVE" | cut -f1) MB), built in $((end - start)) s"
