#!/usr/bin/env bash
# binbaton bench gpu on a machine with only torch, triton and transformers installed (a
# lent GPU machine): binbaton is not pip-installed there, so a package shim maps
# binbaton.<x> to this checkout's <x>/ (as pyproject's package-dir does), then the check
# runs with its results, its PNG and its log written to the folder given (default
# bench/results). Usage, from the repository root: bash bench/run_gpu.sh [OUT] [ARGS...]
# ($PYTHON: the interpreter, default python3; -P keeps the checkout root, whose binbaton/
# holds only the package root, off sys.path).
set -euo pipefail
out=${1:-bench/results}
shift || true
root=$(pwd)
shim=$(mktemp -d)
mkdir -p "$shim/binbaton" "$out"
cp binbaton/__init__.py "$shim/binbaton/"
for dir in schemas service workers kernels bench; do ln -s "$root/$dir" "$shim/binbaton/$dir"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
PYTHONPATH="$shim" PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -P -m binbaton.bench.gpu --out "$out" "$@" \
    2>&1 | tee "$out/bench-gpu.log"
