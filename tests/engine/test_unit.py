"""run_unit: verdicts per shape and dtype, the report's shape, and the comparison rules."""

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from fastkernels.bench.sandbox import cuda_present
from fastkernels.bench.unit import TOLERANCES, UnitReport, _compare, _Reject, run_unit
from fastkernels.registry.tasks import build_spec, library_dir

CHEATS = Path(__file__).parent / "cheats"
GOOD = (CHEATS / "correct_rms_norm.py").read_text()
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

CASES = {
    # name: (op, code, run_unit kwargs)
    "library_silu": ("silu_and_mul", (library_dir(1) / "silu_and_mul.py").read_text(), {}),
    "baseline_as_candidate": ("rms_norm", None, {"require_kernel": False}),
    "baseline_plain": ("rms_norm", None, {}),
    "crash_in_forward": ("rms_norm", GOOD.replace(
        "        return rms_norm(x, self.weight, self.variance_epsilon)",
        "        import ctypes\n        ctypes.string_at(0)"), {}),
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


def test_bf16_tolerance_admits_the_baselines_own_rounding():
    # the bf16 baseline vs the fp32 reference is the error any faithful bf16 kernel may have
    spec = build_spec(1, "rms_norm", MODEL, tiny=True)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    mod = spec.task().RMSNorm(64, 1e-5)
    ref = mod(x)
    _check(mod.bfloat16()(x.bfloat16()), ref, "bfloat16", expect=torch.empty(32, 64, dtype=torch.bfloat16))


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
    # candidate as far off passes, one at 3x fails, though both are outside the table's 2%
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(64, 64, generator=g)
    noise = torch.randn(64, 64, generator=g)
    expect = (ref + 0.05 * noise).bfloat16()
    _check((ref - 0.05 * noise).bfloat16(), ref, "bfloat16", expect=expect)
    with pytest.raises(_Reject, match="outside tolerance"):
        _check((ref + 0.15 * noise).bfloat16(), ref, "bfloat16", expect=expect)
