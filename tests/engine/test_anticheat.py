"""Every known way to fool a kernel benchmark, as a deliberately cheating RMSNorm: each must fail
with a message that says why. The honest kernel beside them must pass (the gate is not simply
rejecting everything). CPU cases run under the Triton interpreter."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fastkernels.judge.gate import run_unit
from fastkernels.registry.tasks import build_spec

CHEATS = Path(__file__).parent / "cheats"

# cheat file -> (dtypes to check it in, fragment the failure message must contain)
EXPECTED = {
    "empty_like": (("float32",), "the kernel never wrote"),
    "cache_last": (("float32",), "returns a cached result"),
    "pretend": (("float32",), "no kernel of the candidate's own"),
    "return_input": (("float32",), "returns its input or a view of it"),
    "first_shape_only": (("float32",), "elements outside tolerance"),
    "one_nan": (("float32",), "has 1 NaN/Inf value(s)"),
    "wrong_eps": (("bfloat16",), "where the epsilon matters"),
    "timer_patch": (("float32",), "replaced timing functions (triton.testing.do_bench)"),
    "side_stream": (("float32",), "uses a separate CUDA stream"),
    "lowered_precision": (("float32",), "elements outside tolerance"),
    "correct_rms_norm": (("bfloat16", "float32"), None),
}


@pytest.fixture(scope="module")
def reports():
    # built here, not in the threads: transformers' lazy imports are not thread-safe
    spec = build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True)

    def run(name):
        dtypes, _ = EXPECTED[name]
        return run_unit(dataclasses.replace(spec, dtypes=dtypes), (CHEATS / f"{name}.py").read_text(), seeds=1)

    # Each run is its own sandboxed child: two at a time halves the wall time on two cores.
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(EXPECTED, pool.map(run, EXPECTED)))


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "correct_rms_norm"])
def test_cheat_is_caught_with_a_reason(reports, name):
    report = reports[name]
    message = report.failure_message()
    assert not report.passed, f"{name} passed the gate"
    assert EXPECTED[name][1] in message, message
    assert message.startswith("L1/rms_norm"), message  # attributed to the operator and its class


def test_first_shape_only_fails_only_where_it_is_wrong(reports):
    verdicts = {s.shape: s.passed for s in reports["first_shape_only"].shapes}
    assert verdicts == {"prefill": True, "decode": False}


def test_wrong_eps_passes_ordinary_inputs_and_fails_small_ones(reports):
    # with unit-variance rows eps=1e-6 vs 1e-5 is a 4.5e-6 relative change, invisible in bf16: only
    # the small-magnitude sample catches it, and the message says so
    for s in reports["wrong_eps"].shapes:
        assert not s.passed and "inputs scaled by 2**-9" in s.reason


def test_honest_kernel_passes(reports):
    report = reports["correct_rms_norm"]
    assert report.passed, report.failure_message()
    assert {(s.shape, s.dtype) for s in report.shapes} == {
        ("prefill", "bfloat16"), ("prefill", "float32"), ("decode", "bfloat16"), ("decode", "float32")}
    for s in report.shapes:
        assert s.samples >= 2 and s.max_abs_err is not None  # fresh + small-magnitude (+ refilled) inputs
        assert s.max_rel_err < (0.05 if s.dtype == "bfloat16" else 1e-4)


@pytest.mark.gpu
def test_side_stream_hidden_from_static_check_is_caught_by_the_profiler():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: the profiler trace shows which stream each kernel ran on")
    spec = build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True)
    report = run_unit(spec, (CHEATS / "side_stream_hidden.py").read_text(), seeds=1, timing=False)
    assert not report.passed and "stream other than the caller's" in report.failure_message()


# ---- the GPU verdicts, on traces shaped like Kineto's chrome export (the decision logic runs on
# any machine; the profiler that produces such traces needs a GPU) -----------------------------

def _trace(*kernels):
    events = [{"ph": "X", "cat": "cpu_op", "name": "aten::fill_", "ts": 0}]
    for i, (name, stream) in enumerate(kernels):
        events.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": 10 + i,
                       "args": {"stream": stream, "device": 0}})
    return events


def test_side_stream_kernel_is_rejected_from_the_trace():
    from fastkernels.measure.unit import _Reject, judge_kernels, kernels_from_trace

    home, kernels = kernels_from_trace(_trace(("FillFunctor marker", 7), ("_rms_norm_row", 13)))
    assert home == 7 and kernels == [("_rms_norm_row", 13)]
    with pytest.raises(_Reject, match="stream other than the caller's"):
        judge_kernels(home, kernels, ["_rms_norm_row"], launched=1, require_kernel=True, cuda_only=False)
    home, kernels = kernels_from_trace(_trace(("FillFunctor marker", 7), ("_rms_norm_row", 7)))
    judge_kernels(home, kernels, ["_rms_norm_row"], launched=1, require_kernel=True, cuda_only=False)


def test_framework_kernels_fail_cuda_only_and_pretenders_fail_always():
    from fastkernels.measure.unit import _Reject, judge_kernels

    ours = "_Z15rms_norm_kernelPK13__nv_bfloat16S1_PS_if"  # a mangled CUDA name contains the source name
    framework = "void at::native::vectorized_elementwise_kernel<4, at::native::mul_kernel>"
    judge_kernels(7, [(ours, 7)], ["rms_norm_kernel"], launched=0, require_kernel=True, cuda_only=True)
    with pytest.raises(_Reject, match="framework compute kernel"):
        judge_kernels(7, [(ours, 7), (framework, 7)], ["rms_norm_kernel"], launched=0, require_kernel=True,
                      cuda_only=True)
    with pytest.raises(_Reject, match="saw no kernel of the candidate's own"):
        judge_kernels(7, [(framework, 7)], ["rms_norm_kernel"], launched=0, require_kernel=True, cuda_only=False)
    # the baseline timed against itself runs only framework kernels, and may
    judge_kernels(7, [(framework, 7)], [], launched=0, require_kernel=False, cuda_only=False)


def test_kernel_names_are_read_from_the_source():
    from fastkernels.judge.gate import kernel_names

    cuda = 'src = """\ntemplate <int B>\n__global__ __launch_bounds__(256) void fused_norm(float* x) {}\n"""\n'
    assert kernel_names((CHEATS / "correct_rms_norm.py").read_text() + cuda) == ["_rms_norm_row", "fused_norm"]
