"""The end-to-end benchmark on tiny models: the measurement itself (in-process, every family), then
the sandboxed `run_benchmark` (pass, a planted bug named, a kernel that raises only inside the full
model blamed by bisection) and `fastkernels bench`."""

import json

import pytest

from fastkernels.cli import main
from fastkernels.events import E2EProgress, E2EResult, KernelBlamed, Recorder
from fastkernels.measure.e2e import (
    E2EReport,
    _judge,
    bracketed,
    pair_ratios,
    run_benchmark,
    run_benchmarks,
)
from fastkernels.measure.e2e_child import _e2e_job
from fastkernels.registry.tasks import baseline_dir, load_task, task_names

from . import planted
from .test_patching import MODELS


def baseline_codes(family, level=1):
    return {f"L{level}/{op}": (baseline_dir(level) / f"{op}.py").read_text()
            for op in task_names(level) if family in load_task(level, op).FAMILIES}


def measure(family, sets, new_tokens=4, **extra):
    """The child's measurement, run in this process (the candidates here are our own files)."""
    payload = {"model": MODELS[family], "tiny": True, "level": 1, "prompt_len": 6, "new_tokens": new_tokens,
               "batch": 1, "device": "cpu", "dtype": "bfloat16", "seed": 0, "compile_baseline": False, **extra}
    out = _e2e_job({**payload, "sets": sets})["sets"]
    reports = {}
    for name, data in out.items():
        r = E2EReport.from_dict({"model_id": MODELS[family], "level": 1, "tiny": True, "candidates": [], **data})
        _judge(r)
        reports[name] = r
    return reports


@pytest.mark.parametrize("family", list(MODELS))
def test_baseline_as_candidate_passes_with_full_token_match(family):
    (r,) = measure(family, {"baseline": baseline_codes(family)}).values()
    assert r.passed, r.verdict
    assert r.token_match == 1.0 and r.top1_agreement == 1.0 and r.logit_rel_error == 0.0
    assert r.logit_rel_error_noise > 0  # bf16 vs fp32 differ even on a 2-layer model
    assert {op["op"] for op in r.shadow["ops"]} == set(baseline_codes(family))
    assert all(op["calls"] > 0 for op in r.shadow["ops"])
    assert r.weights.startswith("seeded random weights") and r.timings["baseline_eager"]["decode_tok_s"] > 0
    # every timing is a median of several warmed-up runs with its spread; the baseline is timed in
    # the same rounds as the patched model, with the attention a user's model runs by default
    t = r.timings
    assert t["patched"]["reps"] == t["baseline_this_set"]["reps"] == t["baseline_eager"]["reps"] == 2
    assert t["patched"]["attention"] == t["baseline_eager"]["attention"] == "sdpa"
    assert r.speedup_decode_min <= r.speedup_decode <= r.speedup_decode_max


def test_timings_are_medians_of_bracketed_runs_with_their_spread():
    sets = {"one": baseline_codes("llama"), "two": {"L1/rms_norm": baseline_codes("llama")["L1/rms_norm"]}}
    reports = measure("llama", sets, timing_reps=3, timing_reference=True)
    t = reports["one"].timings
    assert t["patched"]["reps"] == t["baseline_this_set"]["reps"] == 3
    # the baseline figure pools its runs from every round it was in: the reference pair and both sets
    assert t["baseline_eager"]["reps"] == 2 + 3 + 3 and t["baseline_eager"] == reports["two"].timings["baseline_eager"]
    for name in ("patched", "baseline_this_set", "baseline_eager", "baseline_eager_attention"):
        tm = t[name]
        assert tm["decode_tok_s_min"] <= tm["decode_tok_s"] <= tm["decode_tok_s_max"]
        assert tm["prefill_ms_min"] <= tm["prefill_ms"] <= tm["prefill_ms_max"]
    # timed with the attention a user's model runs; the eager attention the checks use, beside it
    assert t["patched"]["attention"] == t["baseline_eager"]["attention"] == "sdpa"
    assert t["baseline_eager_attention"]["attention"] == "eager" and t["baseline_eager_attention"]["reps"] == 2
    for r in reports.values():
        assert r.speedup_decode_min <= r.speedup_decode <= r.speedup_decode_max
        assert r.token_match == 1.0  # the correctness runs are untouched by the timing attention


def test_planted_bugs_fail_and_the_report_names_op_and_layer():
    codes = baseline_codes("llama")
    sets = {"column": {**codes, "L1/rms_norm": planted.RMS_NORM_ONE_COLUMN},
            "rotary": {**codes, "L1/rotary_embedding": planted.ROTARY_OFF_BY_ONE}}
    reports = measure("llama", sets)
    for name, op in (("column", "L1/rms_norm"), ("rotary", "L1/rotary_embedding")):
        r = reports[name]
        assert not r.passed and "shadow check failed" in r.verdict
        assert [o["op"] for o in r.shadow["ops"] if not o["passed"]] == [op]
        assert f"{op} at model.layers.0." in r.verdict and "(layer 0)" in r.verdict


def test_run_benchmark_in_the_sandbox_passes_the_baseline_and_reports_events():
    rec = Recorder()
    r = run_benchmark(MODELS["qwen3_moe"], 1, {"rms_norm": str(baseline_dir(1) / "rms_norm.py"),
                                               "moe_router": str(baseline_dir(1) / "moe_router.py")},
                      tiny=True, new_tokens=4, sink=rec, timeout=300)
    assert r.passed, r.verdict
    assert r.token_match == 1.0 and sorted(r.candidates) == ["moe_router", "rms_norm"]
    stages = [e.stage for e in rec.of(E2EProgress)]
    assert stages[:3] == ["load", "baseline", "noise floor"] and "shadow check" in stages
    (result,) = rec.of(E2EResult)
    assert result.passed and result.report.shadow["passed"] and result.report.token_match == r.token_match
    assert not rec.of(KernelBlamed)


def test_a_kernel_that_raises_only_inside_the_model_is_blamed():
    rec = Recorder()
    cands = {"rms_norm": planted.RMS_NORM_HEAD + "\n    def forward(self, x):\n"
                         "        return self.weight * self.normed(x, self.variance_epsilon).to(x.dtype)\n",
             "silu_and_mul": planted.SILU_RAISES_ON_ONE_ROW,
             "embedding": str(baseline_dir(1) / "embedding.py")}
    r = run_benchmark(MODELS["llama"], 1, cands, tiny=True, new_tokens=3, sink=rec, timeout=300)
    assert not r.passed
    assert "block size does not divide" in r.error
    assert list(r.blamed) == ["silu_and_mul"] and "block size does not divide" in r.blamed["silu_and_mul"]
    assert [(e.op, e.reason) for e in rec.of(KernelBlamed)] == [("silu_and_mul", r.blamed["silu_and_mul"])]
    assert "blamed: silu_and_mul" in r.verdict


def test_cli_bench(tmp_path, monkeypatch, capsys):
    (tmp_path / "tasks" / "candidate" / "L1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--model", MODELS["mistral"], "--level", "1", "--tiny"]) == 2
    assert "no candidate kernels for level 1" in capsys.readouterr().err
    (tmp_path / "tasks" / "candidate" / "L1" / "rms_norm.py").write_text(planted.RMS_NORM_WRONG_EPS)
    out_file = tmp_path / "report.json"
    code = main(["bench", "--model", MODELS["mistral"], "--level", "1", "--tiny", "--new-tokens", "3",
                 "--out", str(out_file)])
    text = capsys.readouterr().out
    assert code == 1
    assert "shadow check" in text and "noise floor" in text and "FAIL" in text
    report = json.loads(out_file.read_text())
    assert report["blamed"] and list(report["blamed"]) == ["L1/rms_norm"]
    assert "(layer 0)" in report["blamed"]["L1/rms_norm"]


def test_a_kernel_that_kills_the_process_is_blamed_after_a_clean_control_run():
    rec = Recorder()
    cands = {"silu_and_mul": planted.SILU_CRASHES_ON_ONE_ROW, "rms_norm": str(baseline_dir(1) / "rms_norm.py")}
    r = run_benchmark(MODELS["qwen2"], 1, cands, tiny=True, new_tokens=2, sink=rec, timeout=300)
    assert not r.passed and "exited with status 139" in r.error
    assert list(r.blamed) == ["silu_and_mul"] and "status 139" in r.blamed["silu_and_mul"]
    details = [e.detail for e in rec.of(E2EProgress) if e.stage == "blame"]
    assert "does the baseline alone run?" in details  # the crash is not the model's own


class DriftingMachine:
    """A fake GPU box for the e2e schedule: the first generation ever pays a cold start (3x slow),
    and every generation after runs 1% slower than the one before (clocks, temperature)."""

    def __init__(self):
        self.calls = 0
        self.clock = 0.0

    def generate(self):
        self.calls += 1
        slow = (3.0 if self.calls == 1 else 1.0) * (1 + 0.01 * self.calls)
        self.clock += slow
        return 10.0 * slow, 100.0 / slow  # (prefill ms, decode tok/s)

    def measurement(self):  # what timed_generation does: a warm-up, then the timed run
        self.generate()
        return self.generate()


def test_a_model_against_itself_reads_1x_when_bracketed_with_warm_ups():
    m = DriftingMachine()
    runs = bracketed({"baseline": m.measurement, "patched": m.measurement}, 4)
    r = pair_ratios(runs["baseline"], runs["patched"])
    assert r["speedup_decode_min"] <= r["speedup_decode"] <= r["speedup_decode_max"]
    assert r["speedup_decode"] == pytest.approx(1.0, abs=0.005) and r["speedup_prefill"] == pytest.approx(1.0, abs=0.005)
    # the old stopwatch: one cold baseline run, then the patched one (same code): a "speedup"
    cold = DriftingMachine()
    base, patched = cold.generate(), cold.generate()
    assert patched[1] / base[1] > 2.5


def test_bracketed_order_alternates_and_a_deadline_keeps_pairs_of_rounds():
    order = []
    subjects = {n: (lambda n=n: order.append(n) or n) for n in ("a", "b")}
    assert bracketed(subjects, 4) == {"a": ["a"] * 4, "b": ["b"] * 4}
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    now = [0.0]

    def tick(n):
        order.append(n)
        now[0] += 1.0

    order.clear()
    subjects = {n: (lambda n=n: tick(n)) for n in ("a", "b")}
    out = bracketed(subjects, 10, deadline=3.0, clock=lambda: now[0])
    assert order == ["a", "b", "b", "a"] and len(out["a"]) == len(out["b"]) == 2


def test_sets_measured_before_the_job_died_are_reported_from_the_partial_file(tmp_path):
    partial = tmp_path / "partial.jsonl"
    sets = {"good": {"rms_norm": str(baseline_dir(1) / "rms_norm.py")},
            "dies": {"silu_and_mul": planted.SILU_CRASHES_ON_ONE_ROW}}
    got = run_benchmarks(MODELS["llama"], 1, sets, tiny=True, new_tokens=2, timeout=300, blame=False,
                         partial_file=partial, retry_sets_alone=False)
    assert got["good"].passed and got["good"].token_match == 1.0, got["good"].verdict
    assert got["good"].timings["patched"]["reps"] == 2
    assert not got["dies"].passed and "exited with status 139" in got["dies"].error
    assert [json.loads(line)["set"] for line in partial.read_text().splitlines()] == ["good"]


def test_library_kernels_pass_end_to_end_under_the_interpreter():
    """Every L1 library kernel at once in tiny Llama: shadow check clean, full token match, and the
    model-level error within the interpreter's allowance (its bf16 casts truncate: measured 2x)."""
    from fastkernels.registry.tasks import kernel_source, library_dir

    ops = [op for op in task_names(1) if (library_dir(1) / f"{op}.py").is_file()
           and "llama" in load_task(1, op).FAMILIES]
    report = run_benchmark("meta-llama/Llama-3.1-8B-Instruct", 1,
                           candidates={op: kernel_source(library_dir(1) / f"{op}.py") for op in ops}, tiny=True)
    assert report.shadow["passed"], report.shadow["failures"][:3]
    assert report.token_match == 1.0
    assert report.passed, report.verdict
    assert report.logit_rel_error > 0, "the library kernels round differently from eager: some error is expected"


def test_verdict_puts_the_token_match_beside_the_fp32_baselines_own():
    """With random weights greedy tokens can diverge at the first step under any rounding change:
    the verdict then says how well the fp32 baseline itself matches, so 0% is read for what it is."""
    base = {"model_id": MODELS["llama"], "level": 1, "tiny": False, "candidates": [], "device": "cuda:0",
            "logit_rel_error": 0.0823, "logit_rel_error_noise": 0.0841, "top1_agreement": 0.78,
            "top1_agreement_noise": 0.81, "shadow": {"passed": True, "failures": [], "ops": []}}
    flat = E2EReport.from_dict({**base, "token_match": 0.0, "token_match_noise": 0.0})
    _judge(flat)
    assert flat.passed and "token match 0% (the baseline in fp32 matches 0%)" in flat.verdict, flat.verdict
    exact = E2EReport.from_dict({**base, "token_match": 1.0, "token_match_noise": 1.0})
    _judge(exact)
    assert exact.passed and "token match 100%" in exact.verdict and "baseline in fp32" not in exact.verdict
    off = E2EReport.from_dict({**base, "logit_rel_error": 0.5, "token_match": 0.0, "token_match_noise": 0.0})
    _judge(off)
    assert not off.passed and "above" in off.verdict


def test_report_tables_render_their_titles_whole():
    """Rich reads "[...]" as markup: the timing table's title must still say what its brackets mean."""
    from rich.console import Console

    from fastkernels.measure.e2e import report_renderables

    r = E2EReport.from_dict({"model_id": MODELS["llama"], "level": 1, "tiny": True, "candidates": [],
                             "device": "cpu", "verdict": "pass", "passed": True,
                             "timings": {"baseline_eager": {"attention": "sdpa", "reps": 2, "decode_tok_s": 10.0,
                                                            "decode_tok_s_min": 9.0, "decode_tok_s_max": 11.0}}})
    console = Console(width=300, record=True)
    for part in report_renderables(r):
        console.print(part)
    assert "each after a warm-up; [min - max] beside" in console.export_text()


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_layerwise_noise_floor_equals_casting_the_whole_model(family):
    """A rank too big to hold twice (Mixtral-8x7B's half at --tp 2 on an 80 GB card) gets its fp32
    noise floor one decoder layer at a time: the same arithmetic, so the same figures, and the
    parameters end in bf16 again, unchanged."""
    import torch

    from fastkernels.measure.e2e_child import (
        _decoder_layers,
        _fp32_parameters,
        _setup,
        greedy,
        teacher_forced,
    )

    payload = {"model": MODELS[family], "tiny": True, "prompt_len": 6, "batch": 1, "device": "cpu",
               "dtype": "bfloat16", "seed": 0}
    loaded, prompt = _setup(payload)
    model = loaded.model
    before = [p.detach().clone() for p in model.parameters()]
    layers = _decoder_layers(model)
    assert layers is model.model.layers
    seen = []
    probe = layers[1].register_forward_pre_hook(
        lambda m, a: seen.append((next(m.parameters()).dtype, next(layers[0].parameters()).dtype)))
    out = {}
    for layerwise in (False, True):
        with _fp32_parameters(model, torch.bfloat16, layerwise=layerwise):
            tokens, _, _ = greedy(model, prompt, 3)
            out[layerwise] = (tokens, teacher_forced(model, torch.cat([prompt, tokens], 1)))
    probe.remove()
    assert torch.equal(out[False][0], out[True][0]) and torch.equal(out[False][1], out[True][1])
    # the probe hook runs before the layer's own cast: whole-model mode sees fp32 everywhere,
    # layerwise mode sees layer 1 still bf16 and layer 0 already back in bf16
    assert seen[0] == (torch.float32, torch.float32) and seen[-1] == (torch.bfloat16, torch.bfloat16)
    after = list(model.parameters())
    assert all(a.dtype == torch.bfloat16 and torch.equal(a, b) for a, b in zip(after, before))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in layers)


def test_noise_floor_mode_is_checked_and_recorded():
    from fastkernels.measure.e2e_child import _noise_floor_layerwise

    (r,) = measure("llama", {"baseline": baseline_codes("llama")}, noise_floor="layerwise").values()
    assert r.passed and any("one decoder layer at a time" in n for n in r.notes)
    (whole,) = measure("llama", {"baseline": baseline_codes("llama")}).values()
    assert whole.logit_rel_error_noise == r.logit_rel_error_noise
    assert not any("decoder layer at a time" in n for n in whole.notes)  # a CPU model is cast whole
    with pytest.raises(ValueError, match="auto, layerwise or whole"):
        _noise_floor_layerwise(None, "half")
