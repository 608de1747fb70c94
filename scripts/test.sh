#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite under a virtual X server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec xvfb-run -a .venv/bin/python -m pytest "$@"
