#!/usr/bin/env bash
# `--tp 2` end to end on a machine with at least 2 GPUs (nvidia-h200-x2; see e2e_tp.md for H100s):
# Mixtral-8x7B-Instruct, level 1, the library kernels patched into both ranks (NCCL).
# Writes benchmarks/results/e2e_tp_*.json and .log; run from the repository root.
set -euo pipefail
# NVLink multicast off (the device docs ask for all three in every process; fastkernels sets them
# in the ranks it starts as well).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FASTKERNELS_TRACKING=0
out=benchmarks/results
mkdir -p "$out"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "gpus", torch.cuda.device_count())'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fk() { python3 -m fastkernels.cli "$@"; }

# 1. the suite's tensor-parallel tests, the NCCL one included (it runs where 2 GPUs are visible)
python3 -m pytest -q -p no:cacheprovider tests/e2e/test_tp.py 2>&1 | tee "$out/e2e_tp_tests.log"

# 2. the run: full-size Mixtral, one half per GPU (43.7 GiB per rank in bf16, measured on an
#    H100; the noise floor casts it to fp32, 87 GiB: H200s, or --tp 4 on four H100s)
fk bench --model mistralai/Mixtral-8x7B-Instruct-v0.1 --level 1 --tp 2 --candidates tasks/library \
   --out "$out/e2e_tp_mixtral8x7b_L1_tp2.json" 2>&1 | tee "$out/e2e_tp_mixtral8x7b_L1_tp2.log" || true

# 3. the same model and kernels at --tp 1 does not fit one 80 GB GPU (93 GB of bf16 weights):
#    compare instead with Llama-3.1-8B at --tp 1 and --tp 2 (the same kernels; the random weights
#    differ: a full-size model under --tp draws each rank's shard itself)
for tp in 1 2; do
  fk bench --model meta-llama/Llama-3.1-8B-Instruct --level 1 --tp "$tp" --candidates tasks/library \
     --out "$out/e2e_tp_llama8b_L1_tp$tp.json" 2>&1 | tee "$out/e2e_tp_llama8b_L1_tp$tp.log" || true
done
