#!/usr/bin/env bash
# The engine on the GPU after a change to its layout: the GPU-marked sandbox and anti-cheat tests,
# then the agent at level 1 with the library backend on the full-size Llama-3.1-8B shape (the gate,
# the unit benchmark and the end-to-end benchmark, kernels as PyTorch operators). Each step has its
# own limit; then a `fastkernels bench` killed with SIGKILL mid-run, and the GPU's processes 3 s
# later. Results in $OUT/smoke (default OUT /tmp/fk-gpu), one status line per step.
#
#     OUT=/tmp/fk-gpu bash benchmarks/gpu_smoke.sh
set -u
OUT=${OUT:-/tmp/fk-gpu}
R="$OUT/smoke"
mkdir -p "$R"
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1 FASTKERNELS_TRACKING=0
STATUS=$OUT/status.txt
. "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$R/gpu.txt" 2>&1
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$R/gpu.txt" 2>&1
step gpu_tests 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_sandbox.py tests/engine/test_anticheat.py
step agent 240 python3 -m fastkernels.cli agent --model meta-llama/Llama-3.1-8B-Instruct --level 1 \
  --llm-model library --ops rms_norm,silu_and_mul,rotary_embedding --out "$R/agent" --no-tracking
# A bench killed by SIGKILL mid-run (its children hold the 8B model on the GPU): the jobs' watchdogs
# must free the GPU within seconds.
step killed_bench 90 timeout -s KILL 60 python3 -m fastkernels.cli bench --model meta-llama/Llama-3.1-8B-Instruct \
  --level 1 --candidates tasks/library --no-tracking
sleep 3
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > "$R/gpu_procs_3s_after_kill.txt" 2>&1
ps -eo pid,ppid,pgid,etime,args | grep -E "_child_main|fastkernels" | grep -v grep > "$R/procs_3s_after_kill.txt"
cp "$R"/agent/L1/summary.json "$R"/agent/L1/e2e.json "$R"/ 2>/dev/null
rm -rf "$R/agent"
cat "$STATUS"
