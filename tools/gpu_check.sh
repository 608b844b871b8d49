#!/usr/bin/env bash
# GPU acceptance check (issue 12): every part time-boxed, logs and summary.json in OUT_DIR.
#   bash tools/gpu_check.sh OUT_DIR [--anchor PATH] [--data DIR] [--smoke] [--parts a,b] [--time_limit S]
# Runs with the python on PATH (activate the environment first); installs nothing.
set -u
cd "$(dirname "$0")/.." || exit 2
exec python tools/gpu_check.py "$@"
