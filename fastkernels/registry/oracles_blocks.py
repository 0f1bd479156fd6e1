"""HF references of the L2-L4 operators (blocks, decoder layers, whole model): see oracles.py.

Each reference builds the real HF module of the family from the config, loads the baseline's
weights into it by state dict (the names match), and runs it the way the HF model runs it:

- the KV cache is a `DynamicCache` pre-filled, layer by layer, with `cache.update(past_key,
  past_value, layer_idx)` (skipped when P = 0), so the module's own `cache.update` appends this
  step's keys/values after the P cached ones;
- the attention mask is HF's `create_causal_mask(config, inputs_embeds, None, cache, position_ids)`
  computed from that pre-filled cache, before the module runs (exactly where `<Family>Model.forward`
  computes it); the whole-model reference lets `<Family>ForCausalLM` build mask and positions itself;
- this step's new key/value are read back from the cache: `cache.layers[i].keys[:, :, P:]`.

transformers 5.24 calls the cache argument `cache=`, 5.17 `past_key_values=`: `cache_kwarg` picks
the name a function takes.
"""

from __future__ import annotations

import copy
import inspect

import torch

from fastkernels.models.hf import hf_class
from fastkernels.registry.oracles import _with_weights, hf_attr, reference


def _stands_for(level: int, op: str, family: str) -> str:
    from fastkernels.registry.tasks import load_task

    return load_task(level, op).FAMILIES[family]


def eager_config(config):
    """A copy of `config` that runs eager attention and the eager (per-expert loop) MoE experts."""
    config = copy.deepcopy(config)
    config._attn_implementation = "eager"
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"
    return config


def cache_kwarg(fn) -> str:
    """The name under which `fn` takes the KV cache: "cache" (transformers >= 5.2x) or "past_key_values"."""
    params = inspect.signature(fn).parameters
    return "cache" if "cache" in params else "past_key_values"


def prefilled_cache(past_keys, past_values):
    """A DynamicCache holding past_keys[i] / past_values[i] [B, Hkv, P, D] for layer i (none if P = 0)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(past_keys, past_values)):
        if k.shape[2] > 0:
            cache.update(k, v, layer)
    return cache


def new_kv(cache, layer: int, past: int):
    """The key/value entries that the last forward appended to layer `layer` of the cache."""
    entry = cache.layers[layer]
    return entry.keys[:, :, past:], entry.values[:, :, past:]


def causal_mask(config, hidden_states, cache, past: int):
    """HF's causal mask for S new tokens after `past` cached ones (what <Family>Model.forward builds)."""
    from transformers.masking_utils import create_causal_mask

    b, s = hidden_states.shape[:2]
    positions = torch.arange(past, past + s, device=hidden_states.device).unsqueeze(0)
    params = inspect.signature(create_causal_mask).parameters
    kwargs = {"config": config, "attention_mask": None, "position_ids": positions}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden_states
    kwargs[cache_kwarg(create_causal_mask)] = cache
    if "cache_position" in params:  # older 5.x releases still take it
        kwargs["cache_position"] = positions[0]
    return create_causal_mask(**kwargs)


def static_cache(config, past_key, past_value, filled: int):
    """HF's StaticCache of past_key.shape[2] slots whose layer 0 holds the buffers past_key /
    past_value (their rows from `filled` on stale) with its counter at `filled`: the state a
    static-cache decode step finds."""
    from transformers import StaticCache

    cache = StaticCache(config=config, max_cache_len=past_key.shape[2])
    layer = cache.layers[0]
    layer.lazy_initialization(past_key, past_value)
    layer.keys.copy_(past_key)
    layer.values.copy_(past_value)
    layer.cumulative_length.fill_(filled)
    return cache


def _run_with_cache(module, hidden_states, cos, sin, past_key, past_value, cache_position=None, *, config):
    """Run an HF attention module or decoder layer (layer_idx 0) over a pre-filled cache; returns
    (its first output, new key, new value). With `cache_position` (the static-cache form) the cache
    is HF's StaticCache holding the buffers, and HF writes and masks as its static path does."""
    if cache_position is not None:
        past = int(cache_position[0])
        cache = static_cache(config, past_key, past_value, past)
    else:
        past = past_key.shape[2]
        cache = prefilled_cache([past_key], [past_value])
    mask = causal_mask(config, hidden_states, cache, past)
    positions = torch.arange(past, past + hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
    out = module(
        hidden_states=hidden_states,
        position_embeddings=(cos, sin),
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg(module.forward): cache},
    )
    out = out[0] if isinstance(out, tuple) else out
    key, value = new_kv(cache, 0, past)
    s = hidden_states.shape[1]
    return out, key[:, :, :s], value[:, :, :s]  # a static buffer goes on past the new rows


@reference("attention_block")
def _attention_block(config, family, baseline, inputs):
    config = eager_config(config)
    cls = hf_attr(family, _stands_for(2, "attention_block", family))
    hf = _with_weights(cls(config, layer_idx=0), baseline).eval()
    return _run_with_cache(hf, *inputs, config=config)


@reference("mlp_block")
def _mlp_block(config, family, baseline, inputs):
    hf = _with_weights(hf_attr(family, _stands_for(2, "mlp_block", family))(config), baseline).eval()
    return hf(*inputs)


@reference("moe_block")
def _moe_block(config, family, baseline, inputs):
    config = eager_config(config)
    hf = _with_weights(hf_attr(family, _stands_for(2, "moe_block", family))(config), baseline).eval()
    return hf(*inputs)


def _decoder_layer(config, family, baseline, inputs):
    config = eager_config(config)
    hf = _with_weights(hf_class(family, "DecoderLayer")(config, layer_idx=0), baseline).eval()
    return _run_with_cache(hf, *inputs, config=config)


reference("decoder_layer")(_decoder_layer)
reference("moe_decoder_layer")(_decoder_layer)


@reference("causal_lm")
def _causal_lm(config, family, baseline, inputs):
    """<Family>ForCausalLM over a cache pre-filled with every layer's past; positions and mask come
    from the model itself (cache.get_seq_length())."""
    input_ids, past_keys, past_values = inputs
    from transformers import AutoModelForCausalLM

    config = eager_config(config)
    weight = next(baseline.parameters())
    # Built in the target dtype, as the engine loads models: HF keeps its rotary inv_freq in fp32
    # then, where building in fp32 and calling .to(bfloat16) would round it (measured: 0.05 max
    # logit error at bf16 on tiny Llama-3.2-1B, from that rounding alone).
    hf = AutoModelForCausalLM.from_config(config, dtype=weight.dtype, attn_implementation="eager")
    assert type(hf).__name__ == _stands_for(4, "causal_lm", family), type(hf)
    hf.load_state_dict(baseline.state_dict(), strict=True)
    hf = hf.to(weight.device).eval()
    layers = config.num_hidden_layers
    cache = prefilled_cache(past_keys or [], past_values or [])
    past = cache.get_seq_length()
    out = hf(input_ids=input_ids, use_cache=True, **{cache_kwarg(hf.forward): cache})
    keys, values = zip(*(new_kv(cache, i, past) for i in range(layers)))
    return out.logits, list(keys), list(values)
