"""L2-L4 baselines (blocks, decoder layers, whole model): bit-exact with HF in bf16, weights that
move both ways by state dict, a KV-cache convention that composes, and a sane cost model."""

import pytest
import torch

from fastkernels.models.catalog import known_models, resolve
from fastkernels.registry import build_spec, load_task, task_names
from fastkernels.registry.oracles import HF_REFERENCES
from fastkernels.registry.tasks import Workload, build_baseline, build_inputs

MODEL_OF_FAMILY = {}
for _m in known_models():
    MODEL_OF_FAMILY.setdefault(resolve(_m).family, _m)

# Every L2/L3 op for each family that uses it; L4 for every catalog model (Llama-3.2-1B is the one
# with tied embeddings, and not the first llama of the catalog).
BLOCK_CASES = [
    (level, op, MODEL_OF_FAMILY[family])
    for level in (2, 3)
    for op in task_names(level)
    for family in load_task(level, op).FAMILIES
] + [(4, "causal_lm", model) for model in known_models()]


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


@pytest.mark.parametrize("level,op,model", BLOCK_CASES, ids=[f"L{l}-{o}-{m}" for l, o, m in BLOCK_CASES])
def test_bit_exact_with_hf_in_bf16(level, op, model):
    # The baselines run HF's torch ops in HF's order (MoE tokens in HF's per-expert order, routing
    # weights rounded or not per family, inv_freq kept fp32), so in bf16, where a reordered
    # reduction or a missing cast shows as ~1e-2, the outputs must be identical.
    spec = build_spec(level, op, model, tiny=True)
    config = resolve(model, tiny=True).hf_config()
    for shape in spec.shapes:
        base = build_baseline(spec, shape, torch.bfloat16, "cpu", seed=4)
        inputs = build_inputs(spec, shape, torch.bfloat16, "cpu", seed=104)
        with torch.no_grad():
            ours = _flat(base(*inputs))
            theirs = _flat(HF_REFERENCES[op](config, spec.family, base, inputs))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype == torch.bfloat16 and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{op} {model} {shape}")


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_routing_weight_rounding_is_the_familys(family):
    # Mixtral scales expert outputs by fp32 routing weights, Qwen3-MoE rounds them to bf16 first:
    # the other choice is visible in bf16, so the flag each family gets is the one HF uses.
    spec = build_spec(2, "moe_block", MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    base = build_baseline(spec, "prefill", torch.bfloat16, "cpu", seed=1)
    (x,) = build_inputs(spec, "prefill", torch.bfloat16, "cpu", seed=2)
    with torch.no_grad():
        reference = HF_REFERENCES["moe_block"](config, family, base, (x,))
        assert torch.equal(base(x), reference)
        base.round_routing_weights = not base.round_routing_weights
        assert not torch.equal(base(x), reference)


@pytest.mark.parametrize("model", known_models())
def test_weights_move_both_ways_by_state_dict(model):
    from transformers import AutoModelForCausalLM

    config = resolve(model, tiny=True).hf_config()
    hf = AutoModelForCausalLM.from_config(config)
    task = load_task(4, "causal_lm")
    ours = task.CausalLM(**task.init_args(config))
    ours.load_state_dict(hf.state_dict(), strict=True)
    hf.load_state_dict(ours.state_dict(), strict=True)
    tied = ours.lm_head.weight is ours.model.embed_tokens.weight
    assert tied == bool(config.tie_word_embeddings) == (hf.lm_head.weight is hf.model.embed_tokens.weight)
    # The layer- and block-level baselines take the HF submodules' state dicts as they are.
    family = resolve(model).family
    hf_layer = hf.model.layers[0]
    moe = family in ("mixtral", "qwen3_moe")
    parts = [(3, "moe_decoder_layer" if moe else "decoder_layer", hf_layer), (2, "attention_block", hf_layer.self_attn)]
    parts.append((2, "moe_block" if moe else "mlp_block", hf_layer.mlp))
    for level, op, module in parts:
        t = load_task(level, op)
        getattr(t, t.CLASS_NAME)(**t.init_args(config)).load_state_dict(module.state_dict(), strict=True)


@pytest.mark.parametrize("level,op,family", [(2, "attention_block", "qwen2"), (3, "decoder_layer", "qwen3"),
                                             (3, "moe_decoder_layer", "mixtral")])
def test_chunked_prefill_over_a_cache(level, op, family):
    # P > 0 and S > 1 at once is where a top-left aligned mask or a wrong rope position shows.
    spec = build_spec(level, op, MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    task = spec.task()
    base = build_baseline(spec, "prefill", torch.float32, "cpu", seed=5)
    shape = {"batch": 2, "seq": 5, "past": 7}
    hidden, cos, sin, past_key, past_value = task.make_inputs(config, shape, torch.float32, "cpu",
                                                              torch.Generator().manual_seed(6))
    with torch.no_grad():
        out, key, value = base(hidden, cos, sin, past_key, past_value)
        ref = HF_REFERENCES[op](config, family, base, (hidden, cos, sin, past_key, past_value))
        for a, b in zip((out, key, value), ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # causal: changing the last new token leaves the earlier ones' outputs as they were (to
        # rounding: in a MoE layer it can move the other tokens to other rows of an expert's matmul)
        later = hidden.clone()
        later[:, -1] += 1.0
        changed = base(later, cos, sin, past_key, past_value)[0]
        torch.testing.assert_close(changed[:, :-1], out[:, :-1], rtol=1e-5, atol=1e-6)
        assert not torch.isclose(changed[:, -1], out[:, -1]).all(dim=-1).any()
        # and every new token reads the cache
        other = base(hidden, cos, sin, past_key, past_value + 1.0)[0]
        assert not torch.isclose(other, out).all(dim=-1).any()


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-30B-A3B"])
def test_decode_after_prefill_equals_one_longer_prefill(model):
    # The cache convention composes: the keys/values a prefill returns, fed back as the past of a
    # one-token step, give the logits a prefill of all P + 1 tokens gives for its last token.
    spec = build_spec(4, "causal_lm", model, tiny=True)
    base = build_baseline(spec, "prefill", torch.float32, "cpu", seed=7)
    ids = torch.randint(0, spec.init_args["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full, full_keys, _ = base(ids, None, None)
        _, keys, values = base(ids[:, :8], None, None)
        step, step_keys, _ = base(ids[:, 8:], keys, values)
    assert step.shape == (2, 1, spec.init_args["vocab_size"])
    torch.testing.assert_close(step[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
    for a, b in zip(step_keys, full_keys):
        torch.testing.assert_close(a, b[:, :, 8:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", known_models())
def test_cost_counts_the_weights_and_the_matmuls(model):
    # Full-size shapes; the module is built on the meta device only to count its parameters.
    config = resolve(model).hf_config()
    workload = Workload.default(small=False)
    for level in (2, 3, 4):
        for op in task_names(level):
            task = load_task(level, op)
            if config.model_type not in task.FAMILIES:
                continue
            shapes = task.shapes(config, workload)
            with torch.device("meta"):  # the module the unit shapes describe (L4: UNIT_LAYERS deep)
                module = getattr(task, task.CLASS_NAME)(**{**task.init_args(config), **shapes["prefill"].get("init", {})})
            params = sum(p.numel() for p in module.parameters())
            experts = sum(p.numel() for n, p in module.named_parameters() if ".experts." in f".{n}")
            embedding = sum(p.numel() for n, p in module.named_parameters() if "embed_tokens" in n)
            prefill = task.cost(config, shapes["prefill"], torch.bfloat16)
            decode = task.cost(config, shapes["decode"], torch.bfloat16)
            tokens = shapes["prefill"]["batch"] * shapes["prefill"]["seq"]
            # every weight but the embedding table (a lookup) is a matmul operand for every token
            # (MoE: K of E experts per token)
            dense = params - experts - embedding
            assert prefill["flops"] >= 2 * tokens * dense, (model, op)
            assert prefill["flops"] < 2 * tokens * params * 3, (model, op)
            # decode reads at least every non-expert weight once (bf16: 2 bytes)
            assert decode["bytes"] >= 2 * dense, (model, op)
            assert prefill["flops"] > 10 * decode["flops"], (model, op)


def test_whole_model_unit_shapes_keep_the_width_and_cut_the_depth():
    """At full size the L4 unit benchmark runs the model's width and vocabulary over UNIT_LAYERS
    layers (three full-depth copies of an 8B model in fp32 do not fit one GPU); the inputs carry one
    cache per layer it has; tiny models keep all their layers."""
    task = load_task(4, "causal_lm")
    full = build_spec(4, "causal_lm", "meta-llama/Llama-3.1-8B-Instruct", tiny=False)
    config = resolve("meta-llama/Llama-3.1-8B-Instruct").hf_config()
    assert config.num_hidden_layers == 32 and task.UNIT_LAYERS == 2
    for name, shape in full.shapes.items():
        init = full.init_args_for(name)
        assert init["num_layers"] == shape["layers"] == 2, name
        assert init["hidden_size"] == 4096 and init["vocab_size"] == 128256, name
    decode = full.shapes["decode"]
    ids, keys, values = task.make_inputs(config, decode, torch.bfloat16, "cpu", torch.Generator().manual_seed(0))
    assert len(keys) == len(values) == 2 and keys[0].shape == (1, 8, decode["past"], 128)
    # cost: two layers' weights and cache, not 32
    deep = task.cost(config, {k: v for k, v in decode.items() if k != "layers"}, torch.bfloat16)
    shallow = task.cost(config, decode, torch.bfloat16)
    assert 4 * shallow["bytes"] < deep["bytes"]
    tiny = build_spec(4, "causal_lm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True)
    assert all("init" not in s and "layers" not in s for s in tiny.shapes.values())
