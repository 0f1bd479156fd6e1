"""Every known way to fool a kernel benchmark, as a deliberately cheating RMSNorm: each must fail
with a message that says why. The honest kernel beside them must pass (the gate is not simply
rejecting everything). CPU cases run under the Triton interpreter; the cheats that only a GPU's
timing shows are marked `gpu`. Among them, cheats that reach the harness from inside the
candidate's process (a forged result file, the comparison replaced through the module table): the
verdict is computed in a process that never imported the candidate, so they change nothing."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastkernels.judge.gate import run_unit
from fastkernels.registry.tasks import build_spec
from tests.engine.cheats.corpus import source as cheat

# cheat file -> (dtypes to check it in, fragment the failure message must contain)
EXPECTED = {
    "empty_like": (("float32",), "the kernel never wrote"),
    "cache_last": (("float32",), "returns a cached result"),
    "pretend": (("float32",), "no kernel of the candidate's own"),
    "return_input": (("float32",), "returns its input or a view of it"),
    "first_shape_only": (("float32",), "elements outside tolerance"),
    "one_nan": (("float32",), "has 1 NaN/Inf value(s)"),
    "wrong_eps": (("bfloat16",), "where the epsilon matters"),
    "timer_patch": (("float32",), "assigning `_tt.do_bench` reaches into an imported module"),
    "timer_patch_hidden": (("float32",), "replaced timing functions (triton.testing.do_bench)"),
    "forge_result": (("float32",), "no output was written for this sample"),
    "forge_compare": (("float32",), "elements outside tolerance"),
    "scaled_output": (("bfloat16",), "the output as a whole is off"),
    "seed0_weights": (("float32",), "elements outside tolerance"),
    "stack_replay": (("float32",), "`sys._getframe` reaches the callers' frames"),
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
        return run_unit(dataclasses.replace(spec, dtypes=dtypes), cheat(name), seeds=1)

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
    report = run_unit(spec, cheat("side_stream_hidden"), seeds=1, timing=False)
    assert not report.passed and "stream other than the caller's" in report.failure_message()


# ---- the GPU verdicts, on traces shaped like Kineto's chrome export (the decision logic runs on
# any machine; the profiler that produces such traces needs a GPU) -----------------------------

def _trace(*kernels):
    events = [{"ph": "X", "cat": "cpu_op", "name": "aten::fill_", "ts": 0}]
    for i, (name, stream, *dur) in enumerate(kernels):
        events.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": 10 + i,
                       "dur": dur[0] if dur else 1.0, "args": {"stream": stream, "device": 0}})
    return events


def test_side_stream_kernel_is_rejected_from_the_trace():
    from fastkernels.measure.runner import Reject, judge_kernels, kernels_from_trace

    home, kernels = kernels_from_trace(_trace(("FillFunctor marker", 7), ("_rms_norm_row", 13)))
    assert home == 7 and kernels == [("_rms_norm_row", 13, 1.0)]
    with pytest.raises(Reject, match="stream other than the caller's"):
        judge_kernels(home, kernels, ["_rms_norm_row"], launched=1, require_kernel=True, cuda_only=False)
    home, kernels = kernels_from_trace(_trace(("FillFunctor marker", 7), ("_rms_norm_row", 7)))
    judge_kernels(home, kernels, ["_rms_norm_row"], launched=1, require_kernel=True, cuda_only=False)


def test_framework_kernels_fail_cuda_only_and_pretenders_fail_always():
    from fastkernels.measure.runner import Reject, judge_kernels

    ours = "_Z15rms_norm_kernelPK13__nv_bfloat16S1_PS_if"  # as the profiler may show a CUDA kernel: mangled
    framework = "void at::native::vectorized_elementwise_kernel<4, at::native::mul_kernel>(int, float*)"
    judge_kernels(7, [(ours, 7, 5.0)], ["rms_norm_kernel"], launched=0, require_kernel=True, cuda_only=True)
    judge_kernels(7, [("rms_norm_kernel(__nv_bfloat16 const*, int)", 7, 5.0)], ["rms_norm_kernel"], launched=0,
                  require_kernel=True, cuda_only=True)
    with pytest.raises(Reject, match="framework compute kernel"):
        judge_kernels(7, [(ours, 7, 5.0), (framework, 7, 1.0)], ["rms_norm_kernel"], launched=0,
                      require_kernel=True, cuda_only=True)
    with pytest.raises(Reject, match="saw no kernel of the candidate's own"):
        judge_kernels(7, [(framework, 7, 5.0)], ["rms_norm_kernel"], launched=0, require_kernel=True,
                      cuda_only=False)
    # the baseline timed against itself runs only framework kernels, and may
    judge_kernels(7, [(framework, 7, 5.0)], [], launched=0, require_kernel=False, cuda_only=False)


def test_kernel_names_match_exactly_not_as_substrings():
    """An unused `__global__ void _()` (or a kernel named `kernel`) must not make framework kernels
    count as the candidate's own: `_` is a substring of almost every kernel name."""
    from fastkernels.measure.runner import Reject, judge_kernels

    framework = "void at::native::vectorized_elementwise_kernel<4, at::native::mul_kernel>(int, float*)"
    for names in (["_"], ["kernel"], ["elementwise"]):
        with pytest.raises(Reject, match="saw no kernel of the candidate's own"):
            judge_kernels(7, [(framework, 7, 5.0)], names, launched=0, require_kernel=True, cuda_only=True)


def test_a_token_launch_beside_framework_work_is_not_the_candidates_kernel():
    """One tiny launch of its own while PyTorch does the work: its kernels must carry most of the
    forward's GPU time."""
    from fastkernels.measure.runner import Reject, judge_kernels

    framework = "void at::native::reduce_kernel<512, 1>(float*)"
    with pytest.raises(Reject, match=r"own kernels ran 2% of the forward's GPU time"):
        judge_kernels(7, [("_token", 7, 0.2), (framework, 7, 9.8)], ["_token"], launched=1, require_kernel=True,
                      cuda_only=False)
    judge_kernels(7, [("_token", 7, 9.0), (framework, 7, 1.0), ("FillFunctor", 7, 5.0)], ["_token"], launched=1,
                  require_kernel=True, cuda_only=False)


def test_kernel_names_are_read_from_the_source():
    from fastkernels.judge.gate import kernel_names

    cuda = 'src = """\ntemplate <int B>\n__global__ __launch_bounds__(256) void fused_norm(float* x) {}\n"""\n'
    assert kernel_names(cheat("correct_rms_norm") + cuda) == ["_rms_norm_row", "fused_norm"]


# ---- inputs and weights nobody knows in advance; figures the hardware cannot reach ---------------

def test_every_run_draws_its_own_inputs_and_weights_and_a_seed_reproduces_one(reports):
    from fastkernels.measure.runner import Plan

    plans = {Plan.draw(3) for _ in range(8)}
    assert len({p.base for p in plans}) == 8 and len({p.weight_seed for p in plans}) == 8
    assert Plan.draw(3, seed=5) == Plan.draw(3, seed=5)
    first = reports["correct_rms_norm"]
    assert first.seed is not None
    spec = dataclasses.replace(build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True),
                               dtypes=("bfloat16", "float32"))
    again = run_unit(spec, cheat("correct_rms_norm"), seeds=1, seed=first.seed)
    assert again.seed == first.seed
    assert [(s.shape, s.dtype, s.max_abs_err) for s in again.shapes] == [
        (s.shape, s.dtype, s.max_abs_err) for s in first.shapes]


def test_a_timing_faster_than_the_hardware_is_rejected_as_impossible():
    from fastkernels.judge.gate import IMPOSSIBLE, _join_shape
    from fastkernels.measure.unit import ShapeResult

    ceilings = {"copy_bytes_per_s": 3.0e12, "bf16_flops_per_s": 7.0e14}
    base = {"eager_ms": 0.020, "eager_wall_ms": 0.030, "cost": {"bytes": 64 << 20, "flops": 0}, "bound": "memory"}

    def cand(ms):
        return {"device": {"candidate": {"iqm": ms}}, "wall": {"candidate": {"iqm": ms + 0.005}}, "method": "device"}

    honest = ShapeResult(shape="prefill", dtype="bfloat16", passed=True)
    _join_shape(honest, cand(0.025), base, ceilings)  # 64 MiB in 25 us: 2.7 TB/s, 89% of the copy figure
    assert honest.passed and 0.85 < honest.roofline_fraction < 0.95 and honest.speedup_vs_eager == pytest.approx(0.8)
    forged = ShapeResult(shape="prefill", dtype="bfloat16", passed=True)
    _join_shape(forged, cand(0.001), base, ceilings)  # 67 TB/s: 2237% of it
    assert not forged.passed and forged.roofline_fraction > IMPOSSIBLE
    assert "impossible timing" in forged.reason and "copy bandwidth" in forged.reason
    assert forged.speedup_vs_eager is None  # no figure is reported from a clock that cannot be right
    missing = ShapeResult(shape="prefill", dtype="bfloat16", passed=True)
    _join_shape(missing, {"device": {"candidate": {"iqm": -1.0}}}, base, ceilings)
    assert not missing.passed and "not positive numbers" in missing.reason


# ---- the cheats only a GPU's timing shows (run on the device) ---------------------------------------

def _gpu_spec():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: these cheats act only while the candidate is timed")
    return build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=False)


@pytest.mark.gpu
def test_replaying_when_the_caller_is_the_timer_is_caught_by_checking_timed_outputs():
    report = run_unit(_gpu_spec(), cheat("stack_replay_hidden"), seeds=1)
    assert not report.passed, report.failure_message()
    assert "the output of a timed call" in report.failure_message()


@pytest.mark.gpu
def test_slowing_the_baseline_from_the_candidates_process_changes_nothing():
    """The candidate slows torch.rsqrt (the baseline's) at import, through the module table: the
    baselines are timed in the referee's clean process, so the speedup stays what the kernel earns
    (the honest kernel's, measured beside it, within 25%)."""
    spec = _gpu_spec()
    honest = run_unit(spec, cheat("correct_rms_norm"), seeds=1)
    slowed = run_unit(spec, cheat("slow_baseline"), seeds=1)
    assert honest.passed and slowed.passed, slowed.failure_message()
    for h, s in zip(honest.speedups(), slowed.speedups()):
        assert s < 1.25 * h, (h, s)


@pytest.mark.gpu
def test_a_cache_keyed_on_the_tensor_and_its_version_never_hits_while_timed():
    spec = _gpu_spec()
    report = run_unit(spec, cheat("version_cache"), seeds=1)
    honest = run_unit(spec, cheat("correct_rms_norm"), seeds=1)
    assert report.passed, report.failure_message()
    for c, h in zip(report.shapes, honest.shapes):  # no faster than the kernel it wraps
        if c.candidate_ms and h.candidate_ms:
            assert c.candidate_ms > 0.8 * h.candidate_ms, (c.shape, c.candidate_ms, h.candidate_ms)


@pytest.mark.gpu
def test_a_sum_of_squares_kept_in_bf16_fails_at_full_width():
    """At the tiny model's 64 columns a bf16 running sum is off by ~1% (the RMS error it adds is
    within 2.5x the baseline's own); at Llama-3.1-8B's 4096 the sum stalls (bf16's step at 4096 is
    32) and the output is far outside."""
    report = run_unit(_gpu_spec(), cheat("bf16_variance"), seeds=1, timing=False)
    assert not report.passed
    assert any(not s.passed and s.dtype == "bfloat16" for s in report.shapes), report.failure_message()


# ---- the timing protocol on the host clock (a CPU has no stopwatch worth reading; these check who
# times what and which outputs are checked, the figures themselves mean nothing) ---------------------

@pytest.fixture(scope="module")
def host_timed():
    spec = dataclasses.replace(build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True),
                               dtypes=("bfloat16",))

    def run(name):
        return run_unit(spec, cheat(name), seeds=1, _host_clock=True)

    names = ("correct_rms_norm", "stack_replay_hidden", "version_cache", "slow_baseline")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(names, pool.map(run, names)))


def test_host_clock_protocol_times_the_candidate_and_the_baseline_apart(host_timed):
    report = host_timed["correct_rms_norm"]
    assert report.passed, report.failure_message()
    assert "host clock" in report.timing_note
    for s in report.shapes:
        assert s.candidate_ms > 0 and s.baseline_eager_ms > 0 and s.speedup_vs_eager > 0
        assert s.timing["candidate"]["sets"] >= 2 and "eager" in s.timing["baselines"]["device"]
        assert "candidate" not in s.timing["baselines"]["device"]  # the referee never ran it


def test_replaying_when_timed_is_caught_by_the_timed_outputs(host_timed):
    report = host_timed["stack_replay_hidden"]
    assert not report.passed
    assert "the output of a timed call" in report.failure_message(), report.failure_message()


def test_a_version_keyed_cache_never_hits_while_timed(host_timed):
    # a hit returns without running the interpreted kernel (milliseconds): it would be many times faster
    cached, honest = host_timed["version_cache"], host_timed["correct_rms_norm"]
    assert cached.passed, cached.failure_message()
    for c, h in zip(cached.shapes, honest.shapes):
        assert c.candidate_ms > 0.25 * h.candidate_ms, (c.shape, c.candidate_ms, h.candidate_ms)


def test_slowing_the_baseline_at_import_does_not_reach_the_referee(host_timed):
    slowed, honest = host_timed["slow_baseline"], host_timed["correct_rms_norm"]
    assert slowed.passed, slowed.failure_message()
    for s, h in zip(slowed.shapes, honest.shapes):
        assert s.baseline_eager_ms < 4 * h.baseline_eager_ms, (s.shape, s.baseline_eager_ms, h.baseline_eager_ms)


def test_verdicts_of_the_candidates_own_process_survive_the_timed_protocol():
    """On a timed run (every GPU run) the runner's own findings reach the report: no kernel of its
    own, and a forward that does not compile (after its eager outputs passed)."""
    spec = dataclasses.replace(build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True),
                               dtypes=("float32",))
    pretend = run_unit(spec, cheat("pretend"), seeds=1, _host_clock=True)
    assert "no kernel of the candidate's own" in pretend.failure_message(), pretend.failure_message()
    raw = run_unit(spec, cheat("raw_launch"), seeds=1, _host_clock=True)
    assert not raw.passed and all("does not compile" in s.reason for s in raw.shapes), raw.failure_message()


@pytest.mark.parametrize("name, fragment", [
    ("forge_result_list", "without reporting a result"),  # a result file that is not a dict
    ("block_go", "tampered with its folder"),  # the parent's word to time cannot be written
])
def test_a_candidate_that_garbles_the_exchange_fails_without_hanging_the_parent(name, fragment):
    spec = dataclasses.replace(build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True),
                               dtypes=("float32",))
    report = run_unit(spec, cheat(name), seeds=1, _host_clock=True, timeout=120)
    assert not report.passed and fragment in report.failure_message(), report.failure_message()
    assert report.seconds < 100  # the candidate's child was stopped, not left to its 3 x 120 s limit
