#!/usr/bin/env bash
# The GPU measurements still owed by the open issues. Each step has its own time limit and keeps its
# output even if another fails; name steps to run a subset (a device call has 10 minutes: run
# "gate_wall unit_fairness" in one call and "binding cuda_tests" in the next, on the same machine).
#   gate_wall       the agent's gate on a warm GPU, cold vs warm start (unit-benchmark issue: < 10 s)
#   unit_fairness   baseline-as-candidate fairness for the two L1 ops the last run's budget missed
#   binding         decode patched with the baseline files vs unpatched: tiny model (host-bound,
#                   the worst case for binding cost) and the full 8B model
#   cuda_tests      the GPU-marked raw-CUDA tests (every registry width, build errors on the GPU)
#   compile_e2e     compiled vs compiled end to end (issue 20): HF generate, static cache,
#                   transformers' compile, unpatched vs L1- and L2-patched Llama-3.1-8B shape
#   compile_check   each L1/L2 library op at 8B shapes under fullgraph compile + CUDA graphs vs
#                   eager, and a tiny patched Llama through HF's static-cache compile path
#                   (these two fill one call: "compile_e2e compile_check"; their limits in seconds
#                   are COMPILE_E2E_S and COMPILE_CHECK_S, default 330 and 150)
# Run from the repository root on the GPU machine; results land in $OUT/followups (default OUT
# /tmp/fk-gpu), packed as $OUT/followups.tgz, with one status line per step in $OUT/status.txt.
#
#     OUT=/tmp/fk-gpu bash benchmarks/gpu_followups.sh gate_wall unit_fairness
set -u
OUT=${OUT:-/tmp/fk-gpu}
R="$OUT/followups"
mkdir -p "$R"
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1 FASTKERNELS_TRACKING=0
STEPS=${*:-gate_wall unit_fairness binding cuda_tests}
STATUS=$OUT/status.txt
. "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader > "$R/gpu.txt" 2>&1
for s in $STEPS; do
  case $s in
    gate_wall) step gate_wall 200 python3 benchmarks/gate_wall.py --ops rms_norm,silu_and_mul --rounds 2 \
                 --out "$R/gate_wall_h100.md" ;;
    unit_fairness) step unit_fairness 240 python3 benchmarks/unit_fairness.py --ops rotary_embedding,silu_and_mul \
                     --budget-s 180 --out "$R/unit_fairness_h100_rest" ;;
    binding) step binding_tiny 90 python3 benchmarks/binding_overhead.py --device cuda --steps 300 --rounds 15
             step binding_full 150 python3 benchmarks/binding_overhead.py --device cuda --full --steps 50 --rounds 3 ;;
    cuda_tests) step cuda_tests 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_cuda_build.py ;;
    compile_e2e) step compile_e2e "${COMPILE_E2E_S:-330}" python3 benchmarks/compile_e2e.py --rounds 4 --budget-s 30 --out "$R/compile_e2e" ;;
    compile_check) step compile_check "${COMPILE_CHECK_S:-150}" python3 benchmarks/compile_check.py --out "$R/compile_check.json" ;;
    *) echo "unknown step: $s (gate_wall, unit_fairness, binding, cuda_tests, compile_e2e, compile_check)" \
         | tee -a "$OUT/status.txt" ;;
  esac
done
tar czf "$OUT/followups.tgz" -C "$OUT" followups
cat "$OUT/status.txt"
