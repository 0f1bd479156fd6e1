"""Every baseline computes exactly what the HF module it stands for computes, for every family that
uses it (tiny configs, several seeds, every named shape)."""

import pytest
import torch

from fastkernels.models.catalog import known_models, resolve
from fastkernels.registry import LEVELS, build_spec, load_task, task_names
from fastkernels.registry.oracles import HF_REFERENCES
from fastkernels.registry.tasks import build_baseline, build_inputs

# One catalog model per family (the first one the catalog lists).
MODEL_OF_FAMILY = {}
for _m in known_models():
    MODEL_OF_FAMILY.setdefault(resolve(_m).family, _m)

CASES = [
    (level, op, family)
    for level in LEVELS
    for op in task_names(level)
    for family in load_task(level, op).FAMILIES
]


def _flat(out):
    """Outputs as a flat list of tensors (L4 returns lists of per-layer keys/values)."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


@pytest.mark.parametrize("level,op,family", CASES, ids=[f"L{l}-{o}-{f}" for l, o, f in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baseline_matches_hf(level, op, family, seed):
    assert op in HF_REFERENCES, f"no HF reference registered for {op}"
    spec = build_spec(level, op, MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    for shape in spec.shapes:
        base = build_baseline(spec, shape, torch.float32, "cpu", seed=seed)
        inputs = build_inputs(spec, shape, torch.float32, "cpu", seed=100 + seed)
        with torch.no_grad():
            ours = _flat(base(*[t.clone() if torch.is_tensor(t) else t for t in inputs]))
            theirs = _flat(HF_REFERENCES[op](config, family, base, inputs))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and a.dtype == b.dtype, (shape, a.shape, b.shape, a.dtype, b.dtype)
            assert a.abs().max() > 0, f"{op}/{shape}: all-zero output proves nothing"
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{op} {family} {shape}")


def test_every_level_has_tasks():
    for level in LEVELS:
        assert task_names(level), f"no task files at level {level}"


# ---- L1 specifics -------------------------------------------------------------------------------

L1_CASES = [(op, family) for op in task_names(1) for family in load_task(1, op).FAMILIES]


@pytest.mark.parametrize("op,family", L1_CASES, ids=[f"{o}-{f}" for o, f in L1_CASES])
def test_l1_baseline_is_bit_exact_with_hf_in_bf16(op, family):
    # An L1 baseline runs the same torch ops in the same order as HF, so in bf16 (where a reordered
    # reduction or a missing cast shows as ~1e-2) the outputs must be identical, dtypes included.
    spec = build_spec(1, op, MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    for shape in spec.shapes:
        base = build_baseline(spec, shape, torch.bfloat16, "cpu", seed=3)
        inputs = build_inputs(spec, shape, torch.bfloat16, "cpu", seed=103)
        with torch.no_grad():
            ours, theirs = _flat(base(*inputs)), _flat(HF_REFERENCES[op](config, family, base, inputs))
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype, (op, family, shape, a.dtype, b.dtype)
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{op} {family} {shape}")


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # GQA groups of 4 and 7
def test_attention_with_past_and_several_new_tokens(family):
    # Chunked prefill (P > 0 and S > 1) is where a top-left aligned causal mask differs from HF's.
    spec = build_spec(1, "attention", MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    task = spec.task()
    base = build_baseline(spec, "prefill", torch.float32, "cpu")
    shape = {"batch": 2, "seq": 5, "past": 7}
    q, k, v = task.make_inputs(config, shape, torch.float32, "cpu", torch.Generator().manual_seed(7))
    assert k.shape[2] == 12 and q.shape[2] == 5
    ours = base(q, k, v)
    torch.testing.assert_close(ours, HF_REFERENCES["attention"](config, family, base, (q, k, v)), rtol=1e-5, atol=1e-6)
    # the first new token sees keys 0..7 only: changing key 8 onwards leaves its output alone
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 8:] += 1.0
    v2[:, :, 8:] += 1.0
    changed = base(q, k2, v2)
    torch.testing.assert_close(changed[:, 0], ours[:, 0], rtol=0, atol=0)
    assert not torch.allclose(changed[:, 1], ours[:, 1])


def test_router_without_renormalisation_matches_hf():
    spec = build_spec(1, "moe_router", MODEL_OF_FAMILY["qwen3_moe"], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    config.norm_topk_prob = False
    task = spec.task()
    base = getattr(task, task.CLASS_NAME)(**task.init_args(config))
    assert base.norm_topk_prob is False
    inputs = build_inputs(spec, "prefill", torch.float32, "cpu", seed=5)
    weights, indices = base(*inputs)
    assert (weights.sum(-1) < 1).all()  # the top k of E > k probabilities, not renormalised
    for a, b in zip((weights, indices), HF_REFERENCES["moe_router"](config, "qwen3_moe", base, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_router_logits_never_tie(dtype):
    # Full-size Qwen3-30B-A3B: 128 experts, top 8. A tie would make the expert order arbitrary.
    spec = build_spec(1, "moe_router", "Qwen/Qwen3-30B-A3B", tiny=False)
    logits, = build_inputs(spec, "prefill", dtype, "cpu", seed=0)
    assert logits.shape == (4096, 128) and logits.dtype == dtype
    top = logits.float().sort(dim=-1, descending=True).values
    assert (top[:, :-1] > top[:, 1:]).all()
    assert 0.5 < logits.float().std() < 3


def test_rotary_inputs_come_from_the_family_rope():
    # Llama 3.1's cos/sin carry its llama3 frequency scaling (a plain rope gives other angles); each
    # seed's tokens sit at consecutive positions from a random start at or past the shape's cache
    # length (a kernel cannot keep a table of the angles it will be asked for).
    from fastkernels.registry.tasks import Workload

    spec = build_spec(1, "rotary_embedding", "meta-llama/Llama-3.1-8B-Instruct", tiny=True,
                      workload=Workload(batch=1, prefill_len=9, decode_context=8))
    config = resolve(spec.model_id, tiny=True).hf_config()
    task = spec.task()
    n = min(config.max_position_embeddings, 1 << 17)
    table_cos, table_sin = task.rotary_cos_sin(config, 1, n, 0, torch.float32, "cpu")

    def start_of(cos, sin):
        rows = (table_cos[0] == cos[0, 0]).all(-1) & (table_sin[0] == sin[0, 0]).all(-1)
        for p in rows.nonzero().flatten().tolist():
            k = cos.shape[1]
            if torch.equal(table_cos[0, p:p + k], cos[0]) and torch.equal(table_sin[0, p:p + k], sin[0]):
                return p
        raise AssertionError("cos/sin are not consecutive rows of the family's rope")

    starts = {}
    for seed in (0, 1, 2):
        _, _, cos_p, sin_p = build_inputs(spec, "prefill", torch.float32, "cpu", seed=seed)
        _, _, cos_d, sin_d = build_inputs(spec, "decode", torch.float32, "cpu", seed=seed)
        starts[seed] = (start_of(cos_p, sin_p), start_of(cos_d, sin_d))
        assert starts[seed][1] >= 8  # decode's token comes after its 8 cached ones
    assert len({s for s, _ in starts.values()}) == 3 and len({d for _, d in starts.values()}) == 3
    _, _, cos_p, _ = build_inputs(spec, "prefill", torch.float32, "cpu", seed=0)
    p0 = starts[0][0]
    d = spec.shapes["prefill"]["head_dim"]
    inv_freq = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
    plain = torch.cat([torch.outer(torch.arange(p0, p0 + 9.0), inv_freq)] * 2, dim=-1).cos()
    assert not torch.allclose(cos_p[0], plain, atol=1e-3)
    assert torch.allclose(cos_p[0, :, 0], plain[:, 0], atol=1e-3)  # the highest frequency is left unscaled
    assert task.FAMILIES["llama"].startswith("apply_rotary_pos_emb")


@pytest.mark.parametrize("op,family", L1_CASES, ids=[f"{o}-{f}" for o, f in L1_CASES])
def test_l1_task_metadata(op, family):
    """What the harness relies on: prefill and decode shapes, fresh seeded inputs, a cost model."""
    spec = build_spec(1, op, MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    assert {"prefill", "decode"} <= set(spec.shapes)
    for shape in spec.shapes:
        assert spec.bound_for(shape) in ("memory", "compute")
        cost = spec.task().cost(config, spec.shapes[shape], torch.bfloat16)
        assert set(cost) == {"bytes", "flops"} and cost["bytes"] > 0 and cost["flops"] >= 0
        a = build_inputs(spec, shape, torch.bfloat16, "cpu", seed=1)
        b = build_inputs(spec, shape, torch.bfloat16, "cpu", seed=2)
        again = build_inputs(spec, shape, torch.bfloat16, "cpu", seed=1)
        assert all(torch.equal(x, y) for x, y in zip(a, again))
        assert any(not torch.equal(x, y) for x, y in zip(a, b))
        for x in a:
            assert x.dtype in (torch.bfloat16, torch.int64) and x.abs().max() > 0
    if op == "attention":
        assert spec.bound_for("prefill") == "compute" and spec.bound_for("decode") == "memory"
        assert spec.shapes["decode"]["seq"] == 1 and spec.shapes["decode"]["past"] > 0
