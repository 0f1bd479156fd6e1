"""run_unit: verdicts per shape and dtype, the report's shape, and the comparison rules."""

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from fastkernels.judge.gate import run_unit
from fastkernels.measure.unit import UnitReport, _compare, _Reject
from fastkernels.registry.tasks import build_spec, kernel_source, library_dir
from fastkernels.rules.tolerance import TOLERANCES
from fastkernels.sandbox import cuda_present
from tests.engine.cheats.corpus import source as cheat

CHEATS = Path(__file__).parent / "cheats"
GOOD = cheat("correct_rms_norm")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

CASES = {
    # name: (op, code, run_unit kwargs)
    "library_silu": ("silu_and_mul", kernel_source(library_dir(1) / "silu_and_mul.py"), {}),
    "baseline_as_candidate": ("rms_norm", None, {"require_kernel": False}),
    "baseline_plain": ("rms_norm", None, {}),
    "crash_in_forward": ("rms_norm", GOOD.replace(
        "        return rms_norm(x, self.weight, self.variance_epsilon)",
        "        import faulthandler\n        faulthandler._sigsegv()"), {}),
    "renamed_param": ("rms_norm", GOOD.replace("self.weight", "self.scale"), {}),
    "mutates_input": ("rms_norm", GOOD.replace(
        "        return rms_norm(x, self.weight, self.variance_epsilon)",
        "        out = rms_norm(x, self.weight, self.variance_epsilon)\n        x[0, 0] = 0.0\n        return out"), {}),
}


@pytest.fixture(scope="module")
def reports():
    specs = {op: build_spec(1, op, MODEL, tiny=True) for op in ("rms_norm", "silu_and_mul")}

    def run(name):
        op, code, kw = CASES[name]
        spec = dataclasses.replace(specs[op], dtypes=("float32",))
        return run_unit(spec, code if code is not None else spec.source_code, seeds=1, **kw)

    with ThreadPoolExecutor(2) as pool:  # each run is its own child process
        return dict(zip(CASES, pool.map(run, CASES)))


def test_real_triton_kernel_passes_and_cpu_timing_is_labelled(reports):
    r = reports["library_silu"]
    assert r.passed, r.failure_message()
    if cuda_present():  # on a GPU: timed, with speedups and a roofline fraction
        assert all(s.candidate_ms > 0 and s.speedup_vs_eager > 0 and s.roofline_fraction > 0 for s in r.shapes)
    else:
        assert r.device == "cpu" and "not meaningful" in r.timing_note
        assert all(s.candidate_ms is None and s.speedup_vs_eager is None for s in r.shapes)
    assert [s.shape for s in r.shapes] == ["prefill", "decode"]
    assert r.failure_message() == ""


def test_baseline_against_itself_passes_only_when_kernels_are_not_required(reports):
    assert reports["baseline_as_candidate"].passed, reports["baseline_as_candidate"].failure_message()
    plain = reports["baseline_plain"]
    assert not plain.passed and "no kernel of the candidate's own" in plain.failure_message()


def test_crash_in_forward_is_attributed(reports):
    r = reports["crash_in_forward"]
    assert not r.passed and r.kind == "crash"
    assert r.error.startswith("L1/rms_norm RMSNorm candidate: was killed by SIGSEGV")


def test_parameter_names_must_match_the_baseline(reports):
    msg = reports["renamed_param"].failure_message()
    assert "has no parameter(s) weight" in msg


def test_input_mutation_is_caught(reports):
    assert "input #0 was modified in place" in reports["mutates_input"].failure_message()


def test_report_round_trips_through_json(reports):
    r = reports["library_silu"]
    d = json.loads(json.dumps(r.to_dict()))
    assert UnitReport.from_dict(d) == r
    assert d["shapes"][0]["dtype"] == "float32" and "best_speedup" in d


def test_static_rejection_and_cuda_only_without_gpu_need_no_child():
    spec = build_spec(1, "rms_norm", MODEL, tiny=True)
    r = run_unit(spec, "class Nope:\n    pass\n")
    assert not r.passed and "no top-level class named 'RMSNorm'" in r.error and r.seconds == 0.0
    if not cuda_present():
        r = run_unit(spec, GOOD.replace("import triton\n", "").replace("import triton.language as tl\n", ""),
                     cuda_only=True)
        assert not r.passed and "need a CUDA GPU" in r.error


# ---- the comparison rules, directly (no child needed: these are our tensors) -------------------

def _check(cand, ref, dtype="float32", expect=None):
    # the baseline in the case's dtype; by default one with no error of its own
    expect = ref.to(cand.dtype) if expect is None else expect
    return _compare("out", cand, ref, expect, TOLERANCES[dtype])


def test_tolerance_is_relative_to_the_output_scale():
    ref = torch.randn(64, 32) * 1e-4  # a tiny output: an absolute 1e-4 tolerance would pass zeros
    with pytest.raises(_Reject, match="outside tolerance"):
        _check(torch.zeros_like(ref), ref)
    assert _check(ref * (1 + 5e-5), ref)[0] < 5e-8  # 5e-5 relative of values up to ~4e-4


def test_nan_never_passes_even_where_the_reference_is_far():
    ref = torch.randn(8, 8)
    cand = ref.clone()
    cand[3, 4] = float("inf")
    with pytest.raises(_Reject, match=r"1 NaN/Inf value\(s\).*index \(3, 4\)"):
        _check(cand, ref)


def test_shape_dtype_and_layout_are_checked():
    ref = torch.randn(8, 16)
    with pytest.raises(_Reject, match="shape"):
        _check(torch.randn(16, 8), ref, expect=ref)
    with pytest.raises(_Reject, match="dtype bfloat16, expected float32"):
        _check(ref.bfloat16(), ref, expect=ref)
    with pytest.raises(_Reject, match="strides"):
        _check(ref.t().contiguous().t(), ref, expect=ref)


def test_near_constant_reference_is_not_counted_and_integers_compare_exactly():
    ref = torch.full((16, 16), 0.5) + torch.randn(16, 16) * 1e-6
    assert _check(ref.clone(), ref)[2] is True  # skipped: such a reference cannot tell kernels apart
    idx = torch.randint(0, 8, (4, 2))
    assert _check(idx.clone(), idx)[2] is False
    bad = idx.clone()
    bad[1, 1] += 1
    with pytest.raises(_Reject, match="1 of 8 values differ"):
        _check(bad, idx)


def test_bf16_tolerance_admits_the_baselines_own_rounding_and_one_rounding_less():
    # the bf16 baseline vs the fp32 reference is the error any faithful bf16 kernel may have; a
    # kernel that rounds once where the baseline rounds twice is closer still
    spec = build_spec(1, "rms_norm", MODEL, tiny=True)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    mod = spec.task().RMSNorm(64, 1e-5)
    with torch.no_grad():
        ref = mod(x)
        base = mod.bfloat16()(x.bfloat16())
    _check(base.clone(), ref, "bfloat16", expect=base)
    _check(ref.bfloat16(), ref, "bfloat16", expect=base)


@pytest.mark.parametrize("cheat, match", [
    (lambda r: r * 1.015, r"outside tolerance|rms: RMS error"),  # every element within 2% of the reference
    (lambda r: r * 1.005, r"rms: RMS error .* the baseline's own bfloat16 error"),
    (lambda r: r + 0.015 * r.pow(2).mean().sqrt(), r"rms: RMS error"),  # a bias of 1.5% of the RMS
    (lambda r: r + 0.003 * r.pow(2).mean().sqrt(), r"bias: mean error"),  # 0.3%: only the mean shows it
])
def test_outputs_scaled_or_shifted_within_the_flat_2pct_fail_against_the_noise_floor(cheat, match):
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(512, 256, generator=g)
    base = ref.bfloat16()  # a baseline that rounds once
    with pytest.raises(_Reject, match=match):
        _check(cheat(ref).bfloat16(), ref, "bfloat16", expect=base)


def test_check_command_exit_codes(capsys, tmp_path):
    from fastkernels.cli import main

    good = str(CHEATS / "correct_rms_norm.py")
    assert main(["check", good, "--level", "1", "--tiny", "--seeds", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the terminal width
    assert "PASSED" in out and ("not meaningful" in out or cuda_present())
    bad = str(CHEATS / "first_shape_only.py")
    assert main(["check", bad, "--level", "1", "--tiny", "--seeds", "1", "--json", str(tmp_path / "r.json")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "FAILED" in out and "decode" in out and "outside tolerance" in out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    assert main(["check", str(tmp_path / "missing.py"), "--level", "1"]) == 2


def test_deep_blocks_get_the_baselines_own_error_as_floor():
    # a baseline whose own bf16 error is 5% of the output RMS (as a decoder layer's can be): a
    # candidate as far off passes, one at 3x fails in RMS, one with a few elements 5x off fails at
    # the worst element, though all are far outside bf16's 2%
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(64, 64, generator=g)
    noise = torch.randn(64, 64, generator=g)
    expect = (ref + 0.05 * noise).bfloat16()
    _check((ref - 0.05 * noise).bfloat16(), ref, "bfloat16", expect=expect)
    with pytest.raises(_Reject, match=r"rms: RMS error .* is 3.0x"):
        _check((ref + 0.15 * noise).bfloat16(), ref, "bfloat16", expect=expect)
    spiky = ref - 0.05 * noise
    spiky[5, :3] += 5 * 0.05 * noise.abs().max()
    with pytest.raises(_Reject, match="3 of 4096 elements outside tolerance"):
        _check(spiky.bfloat16(), ref, "bfloat16", expect=expect)


# ---- the stopwatch, on a simulated GPU queue (host clock, in-order device, events) -------------

from fastkernels.measure import timing  # noqa: E402


class _Event:
    def __init__(self, ts):
        self.ts = ts


class FakeQueue:
    """A CUDA stream in miniature: the host pays `host` ms to enqueue an operation, the device runs
    operations in order, each starting when both it is enqueued and the previous one is done.
    `drift` slows the device down as time passes (clocks, temperature)."""

    def __init__(self, drift=0.0):
        self.t = 0.0  # host clock, ms
        self.free = 0.0  # when the device finishes what is enqueued
        self.drift = drift

    def launch(self, host, gpu):
        self.t += host
        start = max(self.t, self.free)
        self.free = start + gpu * (1 + self.drift * start)

    def event(self):
        self.launch(0.002, 0.0)
        return _Event(self.free)

    def elapsed_ms(self, a, b):
        return b.ts - a.ts

    def done(self, e):
        return e.ts <= self.t

    def flush(self):
        self.launch(0.005, 0.09)

    def hold(self, ms):
        self.launch(0.005, ms)

    def sync(self):
        self.t = max(self.t, self.free)

    def now(self):
        return self.t / 1e3


def _op(q, kernels, host, gpu):
    def fn(*args):
        for _ in range(kernels):
            q.launch(host, gpu)
    return fn


def test_device_time_hides_the_hosts_launch_cost_and_a_baseline_reads_1x_against_itself():
    q = FakeQueue()
    # an eager decode-sized op: 9 launches of 12 us host each, 2 us on the device each
    subjects = {"eager": _op(q, 9, 0.012, 0.002), "candidate": _op(q, 9, 0.012, 0.002)}
    cmp = timing.compare(subjects, [()] * 4, q, samples=40)
    assert cmp.method == "device"
    for name in subjects:
        assert cmp.device[name].median == pytest.approx(9 * 0.002, rel=1e-6)  # what the GPU spends, nothing else
        assert cmp.wall[name].median == pytest.approx(9 * 0.012, rel=0.05)  # what the caller waits for
        assert cmp.launch_bound(name)
    assert cmp.device["eager"].median / cmp.device["candidate"].median == pytest.approx(1.0, abs=1e-9)


def test_do_bench_style_timing_measures_the_host_on_launch_bound_shapes():
    # why the stopwatch changed: flush, event, fn, event enqueued back to back (do_bench's loop)
    # times the host's launch loop minus what hid behind the flush - 0.46x for a baseline vs itself
    def naive(host):
        q = FakeQueue()
        fn = _op(q, 9, host, 0.002)  # 9 launches of `host` ms each, 2 us on the device each
        samples = []
        for _ in range(20):
            q.flush()
            a = q.event()
            fn()
            b = q.event()
            samples.append(q.elapsed_ms(a, b))
        return timing.Stats.of(samples).median

    assert naive(0.020) > 3 * 9 * 0.002  # 20 us per launch: the host's loop, not the GPU
    assert naive(0.025) / naive(0.020) > 1.3  # 25% more host cost reads as a much slower op


def test_a_large_op_is_not_launch_bound_and_a_faster_kernel_shows_its_device_speedup():
    q = FakeQueue()
    subjects = {"eager": _op(q, 3, 0.01, 0.2), "candidate": _op(q, 1, 0.02, 0.3)}
    cmp = timing.compare(subjects, [()] * 4, q, samples=20)
    assert not cmp.launch_bound("eager") and not cmp.launch_bound("candidate")
    assert cmp.device["eager"].median / cmp.device["candidate"].median == pytest.approx(2.0, rel=1e-6)


def test_interleaving_cancels_a_drifting_machine():
    q = FakeQueue(drift=2e-3)  # the device gets 0.2% slower per simulated millisecond
    subjects = {"a": _op(q, 1, 0.005, 0.05), "b": _op(q, 1, 0.005, 0.05)}
    cmp = timing.compare(subjects, [()] * 4, q, samples=60)
    assert cmp.device["a"].median / cmp.device["b"].median == pytest.approx(1.0, abs=0.01)
    # the same two timed one after the other read differently: the drift, not the code
    q2 = FakeQueue(drift=2e-3)
    first = timing.compare({"a": _op(q2, 1, 0.005, 0.05)}, [()] * 4, q2, samples=60).device["a"].median
    second = timing.compare({"b": _op(q2, 1, 0.005, 0.05)}, [()] * 4, q2, samples=60).device["b"].median
    assert second / first > 1.05


def test_a_forward_that_blocks_the_host_falls_back_to_per_call_events():
    q = FakeQueue()

    def syncing(*args):
        q.launch(0.01, 0.01)
        q.sync()  # a .item() inside forward: the host waits for the device, the spin cannot hold it

    cmp = timing.compare({"eager": _op(q, 1, 0.01, 0.01), "candidate": syncing}, [()] * 2, q, samples=10)
    assert cmp.method == "events"
    assert cmp.to_dict()["launch_bound"].keys() == {"eager", "candidate"}


def test_stats_and_rotations():
    s = timing.Stats.of([5, 1, 4, 2, 3])
    assert (s.median, s.p25, s.p75, s.min, s.max, s.n, s.iqm) == (3, 2, 4, 1, 5, 5, 3)
    assert timing.Stats.of([1, 2, 3, 100]).iqm == 2.5  # the outer quarters left out
    assert timing.rotations(["a", "b", "c"], 3) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_several_candidates_share_one_child_with_exact_attribution():
    from fastkernels.judge.gate import run_unit_many

    spec = dataclasses.replace(build_spec(1, "rms_norm", MODEL, tiny=True), dtypes=("float32",))
    crash = GOOD.replace("        return rms_norm(x, self.weight, self.variance_epsilon)",
                         "        import faulthandler\n        faulthandler._sigsegv()")
    codes = {"correct": GOOD, "timer": cheat("timer_patch_hidden"), "crash": crash,
             "cache": cheat("cache_last")}
    got = run_unit_many(spec, codes, seeds=1)
    assert list(got) == list(codes)
    assert got["correct"].passed, got["correct"].failure_message()
    assert "replaced timing functions" in got["timer"].error
    # the crash ended the second child; each candidate it had not finished ran alone
    assert got["crash"].kind == "crash" and "SIGSEGV" in got["crash"].error
    assert got["cache"].kind == "ok" and "returns a cached result" in got["cache"].failure_message()


def test_gate_in_one_child_gives_the_verdicts_of_validate_then_unit():
    from fastkernels.judge.gate import run_gate
    from fastkernels.judge.validate import validate_kernel

    spec = dataclasses.replace(build_spec(1, "rms_norm", MODEL, tiny=True), dtypes=("float32",))
    broken_import = GOOD.replace("import triton\n", "import triton\nraise RuntimeError('boom at import')\n", 1)
    crash = GOOD.replace("        return rms_norm(x, self.weight, self.variance_epsilon)",
                         "        import faulthandler\n        faulthandler._sigsegv()")
    cases = {"good": GOOD, "broken_import": broken_import, "crash": crash}
    with ThreadPoolExecutor(2) as pool:
        got = dict(zip(cases, pool.map(lambda c: run_gate(spec, c, seeds=1), cases.values())))
    v, u = got["good"]
    assert v.ok and u.passed, u.failure_message()
    assert u.phase_seconds["setup"] > 0 and u.seconds > sum(u.phase_seconds.values())
    v, u = got["broken_import"]
    alone = validate_kernel(broken_import, spec.class_name, spec=spec)
    line = broken_import.splitlines().index("raise RuntimeError('boom at import')") + 1
    assert not v.ok and (v.stage, v.line, v.kind) == (alone.stage, alone.line, alone.kind) == ("import", line, "exception")
    assert "boom at import" in v.error and "while importing the file" in v.error
    assert not u.passed and "not unit-tested" in u.error
    v, u = got["crash"]  # validates (construction is fine), dies in forward: the unit test's verdict
    assert v.ok and not u.passed and u.kind == "crash" and "SIGSEGV" in u.error


def test_identical_kernels_agree_under_a_coarse_event_timer():
    import random

    class Coarse(FakeQueue):  # event timestamps in steps of 1.024 us, the device jittering +-0.3 us
        def __init__(self):
            super().__init__()
            self.rng = random.Random(0)

        def launch(self, host, gpu):
            super().launch(host, gpu + (self.rng.uniform(-3e-4, 3e-4) if gpu else 0.0))

        def event(self):
            e = super().event()
            return _Event(round(e.ts / 1.024e-3) * 1.024e-3)

    q = Coarse()
    cmp = timing.compare({"a": _op(q, 1, 0.01, 0.00307), "b": _op(q, 1, 0.01, 0.00307)}, [()] * 4, q)
    a, b = cmp.device["a"], cmp.device["b"]
    assert a.iqm / b.iqm == pytest.approx(1.0, abs=0.03)
    assert a.iqm == pytest.approx(0.00307, rel=0.1)  # between the timer's steps, where the truth is


def test_a_kernel_that_does_not_compile_fails_the_gate_with_the_hint():
    """The module must also run under torch.compile(fullgraph=True) (a patched model is compiled
    whole): a raw Triton launch breaks the graph; as a PyTorch operator the same kernel passes, and
    its compiled output is judged like any other sample."""
    spec = build_spec(1, "rms_norm", MODEL, tiny=True)
    raw = run_unit(spec, cheat("raw_launch"), seeds=1)
    assert not raw.passed
    for s in raw.shapes:  # the compile step runs for the first dtype only
        if s.dtype == spec.dtypes[0]:
            assert "under torch.compile(fullgraph=True) the forward does not compile" in s.reason, s.reason
            assert "line 28 of the kernel file" in s.reason and "torch.library.custom_op" in s.reason
        else:
            assert s.passed, s.reason
    assert run_unit(spec, cheat("raw_launch"), seeds=1, compile_check=False).passed
    op = run_unit(spec, GOOD, seeds=1)
    assert op.passed, op.failure_message()
    first = [s for s in op.shapes if s.dtype == spec.dtypes[0]]
    assert all(s.samples == 4 for s in first)  # 1 fresh + small + refill + compiled


def test_a_runtime_float_kernel_argument_fails_the_compile_step():
    """Triton types a Python float passed at runtime fp32, Inductor (the kernel inside a compiled
    model) fp64, which turns the kernel's float math fp64: on the H100 the library's own attention
    failed to compile from it. The gate's compile step names the kernel and the parameter (the same
    kernel with the parameter tl.constexpr, the corpus's honest one, passes everywhere else)."""
    spec = build_spec(1, "rms_norm", MODEL, tiny=True)
    honest = cheat("correct_rms_norm")
    assert honest.count("eps: tl.constexpr") == 1
    runtime = run_unit(spec, honest.replace("eps: tl.constexpr", "eps"), seeds=1)
    assert not runtime.passed
    for s in runtime.shapes:
        if s.dtype == spec.dtypes[0]:
            assert "a Python float is passed at runtime to `eps` of `_rms_norm_row`" in s.reason, s.reason
            assert "tl.constexpr" in s.reason
        else:
            assert s.passed, s.reason  # the eager samples of the other dtype are right


def test_a_secret_the_candidate_reads_and_raises_never_reaches_the_report_or_the_retry_prompt(tmp_path, monkeypatch):
    """A candidate that finds a credential (here in a file; /proc/<parent>/environ, ~/.netrc) and
    raises it: the gate's report and the prompt of the next attempt carry it blanked."""
    from fastkernels.agent.prompts import build_retry_prompt

    secret = "Qm7cV9xT2pL5wR8zK3nB6yH4"
    monkeypatch.setenv("FK_PROBE_API_KEY", secret)  # a secret of this process, by the one definition
    (tmp_path / "stolen.txt").write_text(secret)
    spec = build_spec(1, "rms_norm", MODEL, tiny=True)
    code = cheat("correct_rms_norm").replace(
        "        return rms_norm(x, self.weight, self.variance_epsilon)",
        f"        raise RuntimeError('found ' + open({str(tmp_path / 'stolen.txt')!r}).read())")
    assert code.count("found ") == 1
    r = run_unit(spec, code, seeds=1)
    assert not r.passed
    message = r.failure_message()
    assert "found [REDACTED]" in message and secret not in message
    prompt = build_retry_prompt(spec, code, f"{message}; and raw: {secret}")
    assert secret not in prompt.user and "raw: [REDACTED]" in prompt.user


def test_routed_outputs_may_differ_on_a_few_rows_only():
    """A mixture of experts flips a token's expert where two router scores nearly tie: that row
    differs by far more than rounding. Up to ROUTED_ROWS of the rows may; more fails, and outside a
    routed block even one fails."""
    from fastkernels.measure.unit import ROUTED_ROWS

    g = torch.Generator().manual_seed(5)
    ref = torch.randn(200, 64, generator=g)
    base = ref.bfloat16()
    cand = ref.bfloat16().clone()
    cand[7] = torch.randn(64, generator=g).bfloat16()  # one token routed elsewhere
    _compare("out", cand, ref, base, TOLERANCES["bfloat16"], routed=True)
    with pytest.raises(_Reject, match="outside tolerance"):
        _compare("out", cand, ref, base, TOLERANCES["bfloat16"])
    many = ref.bfloat16().clone()
    n = int(ROUTED_ROWS * 200) + 1
    many[:n] = torch.randn(n, 64, generator=g).bfloat16()
    with pytest.raises(_Reject, match="outside tolerance"):
        _compare("out", many, ref, base, TOLERANCES["bfloat16"], routed=True)
