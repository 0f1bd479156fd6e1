"""The block-level kernel library (tasks/library/L2..L4): each file computes what its baseline
computes, with the baseline's parameter names, output structure and layout, on the tiny configs'
named shapes (prefill with no past, decode over a cache) in bf16 and fp32; launches a Triton
kernel of its own (the agent's gate); and a model patched with the L2 library keeps the baseline's
greedy tokens end to end.

One family per operator per dtype (one with a feature the others lack: Qwen3's qk-norm for
attention, Qwen3-MoE's rounded routing weights for MoE, Qwen2's q/k/v biases for the dense layer);
every family was run by hand through run_gate and the end-to-end check. Correctness is the unit
benchmark's rule (fastkernels.measure.unit, one definition): against the baseline run in fp32 with the
dtype's tolerance, or, for deep blocks whose baseline in that dtype is itself further off (a whole
model in bf16 on a GPU), within twice that baseline's own error. Library files are ours, so they are imported in-process here (candidates
only ever run in a child); the gate and the end-to-end check run them in their sandboxed children.
"""

import copy
import os

import pytest
import torch

from fastkernels.measure.unit import _compare, _Reject, _to_fp32
from fastkernels.models.catalog import known_models, resolve
from fastkernels.registry import build_spec, load_task
from fastkernels.registry.tasks import (
    build_baseline,
    build_inputs,
    kernel_source,
    library_dir,
    load_module,
)
from fastkernels.rules.tolerance import TOLERANCES

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETING else "cpu")
MODEL_OF_FAMILY = {}
for _m in known_models():
    MODEL_OF_FAMILY.setdefault(resolve(_m).family, _m)

# (level, op, family)
CASES = [
    (2, "attention_block", "qwen3"),
    (2, "mlp_block", "llama"),
    (2, "moe_block", "qwen3_moe"),
    (3, "decoder_layer", "qwen2"),
    (3, "moe_decoder_layer", "mixtral"),
    (4, "causal_lm", "llama"),
]
CASES = [c for c in CASES if (library_dir(c[0]) / f"{c[1]}.py").is_file()]


def lib(level: int, op: str):
    return load_module(library_dir(level) / f"{op}.py", name=f"fk_library_L{level}_{op}")


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def assert_matches(ours, ref, expect, what: str):
    """Same structure, shapes, dtypes and strides as the baseline (`expect`, in the case's dtype);
    finite; right against the fp32 reference `ref` by the unit benchmark's rule."""
    ours, ref, expect = _flat(ours), _flat(ref), _flat(expect)
    assert len(ours) == len(ref) == len(expect), what
    for i, (a, r, e) in enumerate(zip(ours, ref, expect)):
        tag = f"{what} output {i}"
        assert r.abs().max() > 0, f"{tag}: all-zero reference proves nothing"
        try:
            _compare(tag, a, r, e, TOLERANCES[str(a.dtype).replace("torch.", "")])
        except _Reject as exc:
            pytest.fail(str(exc))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("level,op,family", CASES, ids=[f"L{lv}-{op}-{f}" for lv, op, f in CASES])
def test_library_block_matches_baseline(level, op, family, dtype):
    spec = build_spec(level, op, MODEL_OF_FAMILY[family], tiny=True)
    cls = getattr(lib(level, op), spec.class_name)
    for shape in spec.shapes:
        base = build_baseline(spec, shape, dtype, DEVICE, seed=0)
        ours = cls(**spec.init_args_for(shape)).to(DEVICE, dtype)
        ours.load_state_dict(base.state_dict())  # strict: the same names both ways
        assert set(ours.state_dict()) == set(base.state_dict())
        inputs = build_inputs(spec, shape, dtype, DEVICE, seed=5)
        saved = [t.clone() for t in _flat(list(inputs)) if isinstance(t, torch.Tensor)]
        with torch.no_grad():
            got, want = ours(*inputs), base(*inputs)
            ref = copy.deepcopy(base).float()(*_to_fp32(inputs))
        now = [t for t in _flat(list(inputs)) if isinstance(t, torch.Tensor)]
        assert all(torch.equal(x, keep) for x, keep in zip(now, saved)), f"{op} {shape}: input modified"
        assert_matches(got, ref, want, f"L{level} {op} {family} {shape} {dtype}")


@pytest.mark.parametrize("sdpa", [False, True], ids=["eager", "sdpa"])
def test_attention_mask_is_bottom_right_on_both_paths(sdpa):
    """Prefill (P = 0), decode (S = 1) and P > 0 with S > 1 (chunked prefill: the case the registry's
    shapes do not reach, where SDPA's top-left is_causal would be wrong), on both attention paths
    (the SDPA one is what CUDA runs; forced here on the CPU)."""
    m = lib(2, "attention_block")
    base = load_task(2, "attention_block").AttentionBlock(64, 4, 2, 16, 1e-6, False, False)
    b, hq, hkv, d = 2, 4, 2, 16
    g = torch.Generator().manual_seed(0)
    for p, s in [(0, 4), (5, 1), (5, 3)]:
        q = torch.randn(b, hq, s, d, generator=g)
        keys, values = torch.randn(b, hkv, p + s, d, generator=g), torch.randn(b, hkv, p + s, d, generator=g)
        scores = torch.matmul(q, base.repeat_kv(keys).transpose(2, 3)) * d**-0.5
        allowed = torch.arange(p + s)[None, :] <= torch.arange(p, p + s)[:, None]  # token i sees keys 0..P+i
        want = torch.matmul(torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1), base.repeat_kv(values))
        assert_matches(m.attend(q, keys, values, d**-0.5, sdpa=sdpa), want, want, f"attend sdpa={sdpa} P={p} S={s}")
        if p and s > 1:  # the top-left mask (is_causal=True) is a different answer: the check can tell
            wrong = torch.nn.functional.scaled_dot_product_attention(q, base.repeat_kv(keys), base.repeat_kv(values),
                                                                     is_causal=True)
            assert (wrong - want).abs().max() > 0.1


def test_gate_accepts_a_library_block():
    """The agent's gate (static checks, then the unit check in the sandbox, which requires a Triton
    launch of the candidate's own): what `--llm-model library` serves gets through it."""
    from fastkernels.judge.gate import run_gate

    spec = build_spec(2, "mlp_block", MODEL_OF_FAMILY["llama"], tiny=True)
    verdict, report = run_gate(spec, kernel_source(library_dir(2) / "mlp_block.py"), timing=False)
    assert verdict.ok, verdict
    assert report.passed, report.failure_message()
    assert {(s.shape, s.dtype) for s in report.shapes if s.passed} == {
        (sh, dt) for sh in spec.shapes for dt in ("bfloat16", "float32")}


@pytest.mark.parametrize("model,ops", [
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", ["attention_block", "moe_block"]),
    ("meta-llama/Llama-3.1-8B-Instruct", ["attention_block", "mlp_block"]),
], ids=["mixtral", "llama"])
def test_l2_library_end_to_end(model, ops):
    from fastkernels.measure.e2e import run_benchmark

    cands = {op: kernel_source(library_dir(2) / f"{op}.py") for op in ops}
    r = run_benchmark(model, 2, candidates=cands, tiny=True, compile_baseline=False)
    assert r.passed, r.verdict
    assert r.shadow["passed"] and {o["op"] for o in r.shadow["ops"]} == {f"L2/{op}" for op in ops}
    assert r.token_match_noise == 1.0  # the baseline in fp32 keeps every token: so must we
    assert r.token_match == 1.0, r.verdict
