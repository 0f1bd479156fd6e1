#!/usr/bin/env bash
# `--tp 2` end to end on a machine with 2 GPUs (nvidia-h100-x2 or nvidia-h200-x2): the suite's NCCL
# test, then the issue's run: full-size Mixtral-8x7B-Instruct, level 1, the library kernels patched
# into both ranks. Name steps to run a subset (tests, mixtral, llama); each has its own time limit.
# Results: $R (default benchmarks/results/e2e_tp), one .log and .json per run.
#
#     bash benchmarks/e2e_tp.sh tests mixtral
set -u
# NVLink multicast off (the device docs ask for all three in every process; fastkernels sets them
# in the ranks it starts as well).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1 FASTKERNELS_TRACKING=0
R=${R:-benchmarks/results/e2e_tp}
mkdir -p "$R"
STEPS=${*:-tests mixtral llama}
STATUS=$R/status.txt
. "$(dirname "$0")/steps.sh"
{ python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "gpus", torch.cuda.device_count())'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > "$R/machine.txt" 2>&1
for s in $STEPS; do
  case $s in
    # the suite's tensor-parallel tests, the NCCL one included (it runs where 2 GPUs are visible)
    tests) step tests 240 python3 -m pytest -q -p no:cacheprovider tests/e2e/test_tp.py ;;
    # one rank's half of Mixtral is 43.7 GiB in bf16: the fp32 noise floor casts one decoder layer at
    # a time where the whole half would not fit twice (80 GB cards)
    mixtral) step mixtral8x7b_L1_tp2 450 python3 -m fastkernels.cli bench --model mistralai/Mixtral-8x7B-Instruct-v0.1 --level 1 --tp 2 \
               --candidates tasks/library --out "$R/mixtral8x7b_L1_tp2.json" ;;
    # Mixtral does not fit one 80 GB GPU (93 GB of bf16 weights): the same kernels on Llama-3.1-8B
    # at --tp 1 and --tp 2 (the random weights differ: under --tp each rank draws its own shard)
    llama) for tp in 1 2; do
             step "llama8b_L1_tp$tp" 300 python3 -m fastkernels.cli bench --model meta-llama/Llama-3.1-8B-Instruct --level 1 --tp "$tp" \
               --candidates tasks/library --out "$R/llama8b_L1_tp$tp.json"
           done ;;
    *) echo "unknown step: $s (tests, mixtral, llama)" | tee -a "$R/status.txt" ;;
  esac
done
cat "$R/status.txt"
