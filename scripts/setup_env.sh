#!/usr/bin/env bash
# Creates .venv/ with everything fairchem-deq needs on a CPU machine; a no-op when .venv is complete.
# Order matters: torch first (the local 2.13 CPU wheel), then pinned deps, then the packages whose
# metadata pins an old torch (fairchem-core, torchdeq) without deps, then the PyG extensions built
# from source against the installed torch (pip's cache keeps the built wheels for the next install).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP=$VENV/.fairchem-deq-installed
STAMP_KEY=$(cat requirements/cpu.txt requirements/cpu-constraints.txt scripts/setup_env.sh pyproject.toml | sha1sum | cut -c1-12)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$STAMP_KEY" ]]; then
  exit 0
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
C="-c requirements/cpu-constraints.txt"
$PIP install --upgrade "pip<26" "setuptools<81" wheel
$PIP install $C "torch==${TORCH_VERSION:-2.13.0}"
$PIP install $C -r requirements/cpu.txt
$PIP install --no-deps "fairchem-core==1.10.0" "torchdeq==0.1.0"
# PyG extensions: only source distributions on PyPI; build against the torch in the venv.
$PIP install $C --no-build-isolation "torch-scatter==2.1.2"
$PIP install $C --no-build-isolation "torch-sparse==0.6.18"
$PIP install --no-deps --no-build-isolation -e .
echo "$STAMP_KEY" > "$STAMP"
echo "fairchem-deq environment ready in $VENV"
