#!/usr/bin/env bash
# The judge on the GPU (the verdict in a clean process, the candidate timed in its own, the
# baselines in the referee's): one gate of the library's L1 rms_norm at full Llama-3.1-8B size as a
# smoke test (its report in $R/smoke.json), then the GPU-marked anti-cheat and sandbox tests and the
# unit tests; with STEPS="fairness gate_wall", the stopwatch's fairness (each baseline timed as its
# own candidate must read 1.00) and the warm gate's wall time. One status line per step.
#
#     OUT=/tmp/fk-gpu bash benchmarks/gpu_judge.sh                       # smoke, gpu_tests
#     (one device call holds smoke + gpu_tests; unit_tests in the next: STEPS=unit_tests)
#     OUT=/tmp/fk-gpu STEPS="fairness gate_wall" bash benchmarks/gpu_judge.sh
set -u
OUT=${OUT:-/tmp/fk-gpu}
R="$OUT/judge"
mkdir -p "$R"
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1 FASTKERNELS_TRACKING=0
STATUS=$OUT/status.txt
. "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$R/gpu.txt" 2>&1
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$R/gpu.txt" 2>&1
for s in ${STEPS:-smoke gpu_tests}; do
  case $s in
    smoke) step smoke 150 python3 -c "
import json, sys, time
from fastkernels.judge.gate import run_unit
from fastkernels.registry.tasks import build_spec, kernel_source, library_dir
spec = build_spec(1, 'rms_norm', 'meta-llama/Llama-3.1-8B-Instruct', tiny=False)
t = time.time()
r = run_unit(spec, kernel_source(library_dir(1) / 'rms_norm.py'), seeds=2)
print(f'{time.time() - t:.1f} s', r.passed, r.failure_message())
for s in r.shapes:
    print(s.shape, s.dtype, s.passed, s.speedup_vs_eager, s.speedup_vs_compile, s.speedup_wall_vs_eager, s.roofline_fraction, s.reason[:300])
json.dump(r.to_dict(), open('$R/smoke.json', 'w'), indent=1)
sys.exit(0 if r.passed else 1)"
      grep -q "^smoke rc=0" "$STATUS" || { echo "smoke failed: the rest skipped" | tee -a "$STATUS"; break; } ;;
    # Each GPU-marked test runs a cold full-size gate (~80 s on a fresh machine, 2026-12-07): four at
    # a time (pytest-xdist, on the device's python) so the step holds them; -v names each verdict.
    gpu_tests) step gpu_tests 420 python3 -m pytest -q -v -n 4 -p no:cacheprovider -m gpu -rs tests/engine/test_anticheat.py tests/engine/test_sandbox.py ;;
    unit_tests) step unit_tests 400 python3 -m pytest -q -v -n 4 -p no:cacheprovider -rs tests/engine/test_unit.py ;;
    fairness) step fairness 230 python3 benchmarks/unit_fairness.py --ops rms_norm,silu_and_mul,rotary_embedding --budget-s 180 --out "$R/unit_fairness" ;;
    gate_wall) step gate_wall 150 python3 benchmarks/gate_wall.py --ops rms_norm,silu_and_mul --out "$R/gate_wall.md" ;;
    *) echo "unknown step: $s (smoke, gpu_tests, unit_tests, fairness, gate_wall)" | tee -a "$STATUS" ;;
  esac
done
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > "$R/gpu_procs_after.txt" 2>&1
cat "$STATUS"
