#!/usr/bin/env bash
# Where a GPU training step goes, for the GPT-2-small shape of gpu_check.sh (16 x 1024 tokens, bf16): the step's wall
# time beside its kernel time, eager and compiled, and tunesmith's tokens/s from step 2 with compile on and off.
#
#   bash benchmarks/gpu_profile.sh [STEPS]      # on the GPU; STEPS for the compile comparison (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WORK="${TMPDIR:-/tmp}/tunesmith-gpu-profile"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
for flag in "" --compile; do
    echo "== profile_step.py ${flag:-(eager)}"
    "$PYTHON" benchmarks/profile_step.py --model gpt2-small --device cuda --batch-size 16 --block-size 1024 --steps 5 $flag --work "$WORK"
done
echo "== bench_train.py --mode compile"
"$PYTHON" benchmarks/bench_train.py --model gpt2-small --mode compile --device cuda --block-size 1024 --batch-size 16 \
    --steps "${1:-100}" --precision bf16 --work "$WORK"
