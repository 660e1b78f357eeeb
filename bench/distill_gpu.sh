#!/usr/bin/env bash
# The distillation throughput on a CUDA GPU (run on a machine with one), beside a CPU run on the
# same machine. Python packages the GPU image lacks travel as wheels in .whl/ (see the README).
set -uo pipefail
OUT=${OUT:-/tmp/distill-gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HIVE_LOG_LEVEL=warning
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
run() { name=$1; shift; echo "== $name: $*"; timeout 240 python3 bench/distill_throughput.py "$@" 2>&1 | tee "$OUT/$name.txt" | tail -2; }
run cuda_default --examples 8192 --steps 300 --batch-size 256 --device cuda
run cuda_default_compile --examples 8192 --steps 300 --batch-size 256 --device cuda --compile
run cuda_large --examples 8192 --steps 200 --batch-size 128 --device cuda --n-layer 8 --n-embd 512 --n-head 8
run cpu_same_machine --examples 2048 --steps 20 --batch-size 64 --device cpu
