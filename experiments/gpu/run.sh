#!/usr/bin/env bash
# The device machine's command: bash experiments/gpu/run.sh [BUDGET_S] (carry .gpu-pack).
# Installs the carried wheels, puts the Pillow stand-in for imagecodecs first on the
# path and trains the runs of .gpu-pack/configs for BUDGET_S seconds in all (default 380),
# writing models, logs and summary.json to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
budget=${1:-380}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .gpu-pack/wheels/*.whl
export PYTHONPATH="$PWD/experiments/gpu/shim:/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L || true
workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
python3 experiments/gpu/train_gpu.py --budget-s "$budget" --workers "$workers" --out "$out" \
    "${@:2}" 2>&1 | tee "$out/log.txt"
