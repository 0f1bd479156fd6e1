"""Binding operator implementations into live tiny HF models of every family: the baseline as a
candidate changes nothing (bit for bit), planted bugs fail the shadow check at the op and layer
where they run, un-patching restores the original exactly, a patched and an unpatched model
coexist, and torch.compile of another model still works."""

import pytest
import torch

import fastkernels
from fastkernels.errors import UsageError
from fastkernels.models import load_model, resolve
from fastkernels.registry.patching import patch
from fastkernels.registry.tasks import baseline_dir, load_task, task_names

from . import planted

MODELS = {
    "llama": "meta-llama/Llama-3.2-1B-Instruct",
    "mistral": "mistralai/Mistral-7B-Instruct-v0.3",
    "mixtral": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "qwen2": "Qwen/Qwen2.5-7B-Instruct",
    "qwen3": "Qwen/Qwen3-8B",
    "qwen3_moe": "Qwen/Qwen3-30B-A3B",
}


def tiny(family, seed=0):
    return load_model(resolve(MODELS[family], tiny=True), dtype=torch.bfloat16, seed=seed).model


def baselines(family, level):
    return {f"L{level}/{op}": str(baseline_dir(level) / f"{op}.py")
            for op in task_names(level) if family in load_task(level, op).FAMILIES}


def ids(batch=2, seq=7, seed=0):
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def cache_kw(out):
    return "cache" if hasattr(out, "cache") else "past_key_values"


@torch.no_grad()
def prefill_and_decode(model, steps=2, batch=2):
    """Logits of a prefill of 7 tokens and `steps` decode steps through HF's dynamic cache."""
    out = model(ids(batch=batch), use_cache=True)
    kw = cache_kw(out)
    cache, logits = getattr(out, kw), [out.logits]
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(nxt, use_cache=True, **{kw: cache})
        logits.append(out.logits)
        nxt = out.logits[:, -1:].argmax(-1)
    return logits


def snapshot(model):
    """Everything un-patching must restore: the module objects, the instance dicts, the weights."""
    return ([(n, id(m), sorted(m.__dict__)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("family", list(MODELS))
def test_level1_baselines_change_nothing_and_unpatch_restores(family):
    model = tiny(family)
    before = snapshot(model)
    ref = prefill_and_decode(model)
    cands = baselines(family, 1)
    with patch(model, cands, shadow=True) as handle:
        got = prefill_and_decode(model)
        report = handle.shadow_report()
    for a, b in zip(got, ref):
        assert torch.equal(a, b)  # bf16: the baseline files are bit-exact with HF's modules
    assert report.passed, report.failures
    called = {op.op: op.calls for op in report.ops}
    assert set(called) == set(cands) and all(called.values()), called  # every op ran in the model
    after = snapshot(model)
    assert after[0] == before[0]
    assert all(torch.equal(after[1][k], v) for k, v in before[1].items())
    again = prefill_and_decode(model)
    assert all(torch.equal(a, b) for a, b in zip(again, ref))


WITHOUT_SHADOW = [(family, 1) for family in MODELS] + [(f, lvl) for f in ("llama", "qwen3_moe") for lvl in (2, 3, 4)]


@pytest.mark.parametrize("family,level", WITHOUT_SHADOW, ids=[f"{f}-L{lvl}" for f, lvl in WITHOUT_SHADOW])
def test_without_shadow_the_model_calls_the_implementations_directly(family, level, monkeypatch):
    # A patch made to run (no shadow=True) puts no Site between the model and each kernel: at
    # batch-1 decode every op is launch-bound and a frame per call is lost speed.
    from fastkernels.registry.forwards import Site

    model = tiny(family)
    ref = prefill_and_decode(model)

    def no_site(self, *args):
        raise AssertionError(f"{self.key} at {self.name} went through its Site")

    monkeypatch.setattr(Site, "__call__", no_site)
    with patch(model, baselines(family, level), level=level) as handle:
        got = prefill_and_decode(model)
    assert handle.sites and all(s.entry == s.run_candidate for s in handle.sites)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))  # the baseline files, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(prefill_and_decode(model), ref))  # un-patched


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe"])
@pytest.mark.parametrize("level", [2, 3, 4])
def test_block_layer_and_model_levels_run_over_the_hf_cache(family, level):
    model = tiny(family)
    ref = prefill_and_decode(model)
    with patch(model, baselines(family, level), level=level, shadow=True) as handle:
        got = prefill_and_decode(model)
        report = handle.shadow_report()
    assert report.passed and all(op.calls == 3 * (op.sites or 1) for op in report.ops), report.to_dict()["ops"]
    for a, b in zip(got, ref):
        # The blocks reproduce HF's math in the same order: equal in bf16 (decode steps included,
        # so the keys/values written into HF's cache are the right ones).
        assert torch.equal(a, b)


BUGS = [
    ("llama", "L1/rms_norm", planted.RMS_NORM_ONE_COLUMN, "model.layers.0.input_layernorm (layer 0)"),
    ("mistral", "L1/rms_norm", planted.RMS_NORM_WRONG_EPS, "model.layers.0.input_layernorm (layer 0)"),
    ("qwen2", "L1/rms_norm", planted.RMS_NORM_NO_WEIGHT, "model.layers.0.input_layernorm (layer 0)"),
    ("qwen3", "L1/rms_norm", planted.RMS_NORM_NARROW_ROWS, "model.layers.0.self_attn.q_norm (layer 0)"),
    ("llama", "L1/rotary_embedding", planted.ROTARY_OFF_BY_ONE, "model.layers.0.self_attn (layer 0)"),
    ("mixtral", "L1/moe_router", planted.ROUTER_WRONG_TOPK, "model.layers.0.mlp.gate (layer 0)"),
    ("qwen3_moe", "L1/moe_router", planted.ROUTER_WRONG_TOPK, "model.layers.0.mlp.gate (layer 0)"),
]


@pytest.mark.parametrize("family,op,code,site", BUGS, ids=[f"{b[0]}-{b[1][3:]}-{i}" for i, b in enumerate(BUGS)])
def test_planted_bugs_fail_the_shadow_check_at_their_op_and_layer(family, op, code, site):
    model = tiny(family)
    cands = {**baselines(family, 1), op: code}  # every other op correct
    with patch(model, cands, shadow=True) as handle:
        prefill_and_decode(model)
        report = handle.shadow_report()
    assert not report.passed
    assert report.failing_ops() == [op]
    assert any(f.startswith(f"{op} at {site}:") for f in report.failures), report.failures
    failed = next(o for o in report.ops if o.op == op)
    assert failed.worst_layer is not None and failed.worst_ratio > 1


def test_narrow_row_bug_spares_the_hidden_size_norms():
    model = tiny("qwen3")
    with patch(model, {"rms_norm": planted.RMS_NORM_NARROW_ROWS}, shadow=True) as handle:
        prefill_and_decode(model)
        sites = handle.shadow_report().sites
    bad = {s.site for s in sites if not s.passed}
    assert bad == {f"model.layers.{i}.self_attn.{n}" for i in range(2) for n in ("q_norm", "k_norm")}


def test_a_bug_at_one_call_site_is_named_with_that_layer():
    model = tiny("llama")
    handle = patch(model, {"rms_norm": str(baseline_dir(1) / "rms_norm.py")}, shadow=True)
    (site,) = [s for s in handle.sites if s.name == "model.layers.1.post_attention_layernorm"]
    right = site.run_candidate
    site.run_candidate = lambda x: right(x) * 1.25  # this one call site goes wrong
    prefill_and_decode(model)
    report = handle.shadow_report()
    handle.unpatch()
    (op,) = report.ops
    assert not op.passed and op.worst_layer == 1 and op.worst_site == site.name
    assert [f.split(":")[0] for f in op.failures] == ["L1/rms_norm at model.layers.1.post_attention_layernorm (layer 1)"]
    assert {s.site for s in report.sites if s.passed} == {
        "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
        "model.layers.1.input_layernorm", "model.norm"}


def test_shadow_flags_a_kernel_that_writes_into_its_input():
    code = planted.RMS_NORM_HEAD + '''
    def forward(self, x):
        out = self.weight * self.normed(x, self.variance_epsilon).to(x.dtype)
        x.zero_()
        return out
'''
    model = tiny("llama")
    with patch(model, {"rms_norm": code}, shadow=True) as handle:
        prefill_and_decode(model, steps=0)
        failures = handle.shadow_report().failures
    assert failures and all("modified its input in place" in f for f in failures)


def test_patched_and_unpatched_models_coexist():
    a, b = tiny("llama"), tiny("llama")  # same seed: the same weights
    ref = prefill_and_decode(b)
    cls_forward = type(a.model.layers[0]).forward
    with fastkernels.patch(a, {"rms_norm": planted.RMS_NORM_NO_WEIGHT, "add_rms_norm": str(baseline_dir(1) / "add_rms_norm.py")}):
        wrong = prefill_and_decode(a)
        right = prefill_and_decode(b)  # the other instance, same classes, untouched
        assert type(a.model.layers[0]).forward is cls_forward and "forward" not in vars(b.model.layers[0])
    assert all(torch.equal(x, y) for x, y in zip(right, ref))
    assert not torch.equal(wrong[0], ref[0])
    assert all(torch.equal(x, y) for x, y in zip(prefill_and_decode(a), ref))


def test_torch_compile_of_another_model_works_while_one_is_patched():
    # Same family, same classes: a global patch (Liger's apply_liger_kernel_to_*) would reach the
    # other model too, and the planted bug would show in its compiled output.
    patched, other = tiny("llama"), tiny("llama", seed=1)
    x = ids(batch=1, seq=5)
    with torch.no_grad():
        eager = other(x).logits
    with patch(patched, {**baselines("llama", 1), "L1/rms_norm": planted.RMS_NORM_NO_WEIGHT}):
        compiled = torch.compile(other, backend="aot_eager")
        with torch.no_grad():
            got = compiled(x).logits
            patched(x)  # the patched model still runs beside it
    assert torch.equal(got, eager)


def test_unpatch_happens_when_the_block_raises():
    model = tiny("llama")
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="rows"):
        with patch(model, {"silu_and_mul": planted.SILU_RAISES_ON_ONE_ROW}):
            prefill_and_decode(model, batch=1)
    assert snapshot(model)[0] == before[0]


def test_usage_errors_are_one_line():
    model = tiny("llama")
    with pytest.raises(UsageError, match="not used by llama"):
        patch(model, {"moe_router": planted.ROUTER_WRONG_TOPK})
    with pytest.raises(UsageError, match="defines no nn.Module class 'RMSNorm'"):
        patch(model, {"rms_norm": "import torch\nclass Other(torch.nn.Module):\n    pass\n"})
    with pytest.raises(UsageError, match="no operator named 'layernorm'"):
        patch(model, {"layernorm": "x = 1\n"})
    with pytest.raises(UsageError, match="no candidate implementations"):
        patch(model, {}, level=1)
    assert "forward" not in vars(model.model.layers[0].mlp)


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe"])
def test_library_triton_kernels_pass_the_shadow_check_in_the_model(family):
    # The shipped kernels, run by the Triton interpreter on the model's real activations and
    # layouts (rotary gets HF's strided q/k views; the MoE experts' gate/up come from a chunk).
    from fastkernels.registry.tasks import library_dir

    model = tiny(family)
    with patch(model, str(library_dir(1).parent), level=1, shadow=True, strict=False) as handle:
        prefill_and_decode(model, steps=1)
        report = handle.shadow_report()
    assert report.passed, report.failures
    used = {f"L1/{op}" for op in task_names(1) if family in load_task(1, op).FAMILIES}
    assert {op.op for op in report.ops if op.calls} == used
    assert handle.notes == [f"{k} is not used by {family} models" for k in sorted({"L1/moe_router"} - used)]


def test_deep_blocks_are_judged_against_the_fp32_baseline_like_the_unit_benchmark():
    # A decoder layer in bf16 rounds many times: a correct kernel can differ from the bf16
    # baseline by more than the flat tolerance, yet be as close to the fp32 baseline as the bf16
    # baseline itself is. Twice the baseline's own error passes (the unit benchmark's rule).
    from types import SimpleNamespace

    from fastkernels.registry.shadow import ShadowCheck
    from fastkernels.rules.tolerance import TOLERANCES

    gen = torch.Generator().manual_seed(0)
    ref32 = torch.randn(64, 64, generator=gen)
    base = (ref32 + 0.05 * torch.randn(64, 64, generator=gen)).bfloat16()
    close = (ref32 + 0.05 * torch.randn(64, 64, generator=gen)).bfloat16()
    far = (ref32 + 0.2 * torch.randn(64, 64, generator=gen)).bfloat16()
    shadow = ShadowCheck()
    shadow.tolerances["L3/decoder_layer"] = TOLERANCES["bfloat16"]
    for name, cand in (("model.layers.0", close), ("model.layers.1", far)):
        site = SimpleNamespace(key="L3/decoder_layer", name=name, layer=int(name[-1]), normalize=None)
        shadow.compare(site, cand, base, False, reference=lambda: ref32)
    good, bad = shadow.report().sites
    assert good.passed and good.worst_ratio <= 1
    assert not bad.passed and bad.worst_ratio > 1 and "off by up to" in bad.failure
