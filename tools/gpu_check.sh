#!/usr/bin/env bash
# GPU acceptance check (issue 12): every part time-boxed, logs and summary.json in OUT_DIR.
#   bash tools/gpu_check.sh OUT_DIR [--anchor PATH] [--data DIR] [--smoke] [--parts a,b] [--time_limit S]
# Runs with $PYTHON, else the python (or python3) on PATH, with what is installed there: it
# installs nothing and needs no package index. See tools/gpu_check.py for the parts.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$(command -v python || command -v python3)}"
if [ -z "$PY" ]; then
    echo "error: no python on PATH; set PYTHON=/path/to/python" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1
exec "$PY" "$HERE/gpu_check.py" "$@"  # OUT_DIR stays relative to where you are
