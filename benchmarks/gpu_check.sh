#!/usr/bin/env bash
# One prepared check for a machine with one CUDA GPU (packages installed, no network): a GPT-2 124M-shaped
# model (random init, vocabulary 50257, block 1024, bf16) trained for a fixed number of steps by tunesmith
# and by transformers.Trainer, printing tokens/s, MFU and peak memory for each. Finishes in minutes.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU
#   bash benchmarks/gpu_check.sh --device cpu    # the same path on a tiny model (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE=${2:?--device needs cpu or cuda}; fi
if [ "$DEVICE" = cpu ]; then
    set -- --model tiny --device cpu --block-size 64 --batch-size 2 --steps 3
else
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
    set -- --model gpt2-small --device cuda --block-size 1024 --batch-size 16 --steps 60
fi
exec "$PYTHON" benchmarks/bench_train.py "$@" --precision bf16 --work "${TMPDIR:-/tmp}/tunesmith-gpu-check"
