#!/usr/bin/env bash
# README command 1: set up, then open the sample slide + mosaic in napari. Without a display
# (or with DEMO_HEADLESS=1) it writes screenshots + summary to ./view-out and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
args=(view --out view-out)
if [ -n "${DEMO_HEADLESS:-}" ] || { [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; }; then
  args+=(--headless)
fi
exec .venv/bin/napari-glimpse "${args[@]}" "$@"
