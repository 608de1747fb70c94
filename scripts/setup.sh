#!/usr/bin/env bash
# Create .venv with napari-glimpse (editable) and its test tools. Idempotent.
# torch is installed FIRST, pinned, so pip never swaps in another build when resolving the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all,testing]"
# napari needs an X server with OpenGL for screenshots and GUI tests: xvfb, plus the xcb
# libraries Qt's xcb platform plugin loads (missing ones abort Qt with "could not load xcb").
# libturbojpeg0: wsidicomizer, which makes the test DICOM.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  pkgs="xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
        libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-xfixes0
        libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3 libturbojpeg0"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
elif ! command -v xvfb-run >/dev/null; then
  echo "setup.sh: xvfb-run is missing and we are not root; install xvfb for GUI tests" >&2
fi
echo "setup.sh: ready (.venv/bin/napari-glimpse)"
