"""How each operator maps onto the Hugging Face modules of each family.

`HF_REFERENCES[op](config, family, baseline, inputs)` runs the HF module or function that the
baseline stands for, on the same weights (state-dict names match HF's) and the same inputs, and
returns its output in the baseline's convention. The baseline-vs-HF tests use it to prove every
baseline computes exactly what the model computes.
"""

from __future__ import annotations

from typing import Callable

import torch

from fastkernels.models.hf import hf_class, hf_module


def hf_attr(family: str, name: str):
    return getattr(hf_module(family), name)


def _with_weights(hf: torch.nn.Module, baseline: torch.nn.Module) -> torch.nn.Module:
    missing, unexpected = hf.load_state_dict(baseline.state_dict(), strict=True), None
    del missing, unexpected
    return hf.to(next(baseline.parameters()).device).to(next(baseline.parameters()).dtype)


HFReference = Callable[[object, str, torch.nn.Module, tuple], object]
HF_REFERENCES: dict[str, HFReference] = {}


def reference(op: str):
    def register(fn: HFReference) -> HFReference:
        HF_REFERENCES[op] = fn
        return fn

    return register


@reference("rms_norm")
def _rms_norm(config, family, baseline, inputs):
    from fastkernels.registry.tasks import load_task

    cls = hf_attr(family, load_task(1, "rms_norm").FAMILIES[family])
    hf = _with_weights(cls(baseline.weight.shape[0], eps=baseline.variance_epsilon), baseline)
    return hf(*inputs)


@reference("silu_and_mul")
def _silu_and_mul(config, family, baseline, inputs):
    from transformers.activations import ACT2FN

    gate, up = inputs
    return ACT2FN[config.hidden_act](gate) * up


def _hf_name(level: int, op: str, family: str) -> str:
    """The HF class or function a task stands for: the first word of its FAMILIES entry."""
    from fastkernels.registry.tasks import load_task

    return load_task(level, op).FAMILIES[family].split()[0]


@reference("add_rms_norm")
def _add_rms_norm(config, family, baseline, inputs):
    # The decoder layer's `hidden_states = residual + hidden_states`, then its RMSNorm module.
    x, residual = inputs
    cls = hf_attr(family, _hf_name(1, "add_rms_norm", family))
    hf = _with_weights(cls(baseline.weight.shape[0], eps=baseline.variance_epsilon), baseline)
    hidden_states = residual + x
    return hf(hidden_states), hidden_states


@reference("rotary_embedding")
def _rotary_embedding(config, family, baseline, inputs):
    q, k, cos, sin = inputs
    return hf_attr(family, "apply_rotary_pos_emb")(q, k, cos, sin, unsqueeze_dim=1)


@reference("attention")
def _attention(config, family, baseline, inputs):
    """The family's eager_attention_forward, called as its Attention module calls it, with the mask
    the HF model builds for it: masking_utils.create_causal_mask over a DynamicCache that already
    holds the P cached keys (so the mask is bottom-right aligned by HF's own logic)."""
    import inspect

    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask

    q, k, v = inputs[:3]
    batch, s, total = q.shape[0], q.shape[2], k.shape[2]
    past = total - s
    with torch.device("meta"):  # only its head grouping and scaling are read, not its weights
        module = hf_class(family, "Attention")(config, layer_idx=0).eval()
    if len(inputs) == 4:  # the static-cache form: HF's StaticCache holding the buffers, its own mask
        from fastkernels.registry.oracles_blocks import causal_mask, static_cache

        first = int(inputs[3][0])
        cache = static_cache(config, k, v, first)  # its counter as the model reads it: before the write
        probe = torch.empty(batch, s, 1, dtype=q.dtype, device=q.device)
        mask = causal_mask(config, probe, cache, first)
        out, _weights = hf_attr(family, "eager_attention_forward")(
            module, q, k, v, mask, scaling=module.scaling, dropout=0.0
        )
        return out
    cache = DynamicCache()
    if past:
        cache.update(k[:, :, :past], v[:, :, :past], 0)
    # create_causal_mask reads only the batch size, length, dtype and device of its embeddings.
    probe = torch.empty(batch, s, 1, dtype=q.dtype, device=q.device)
    params = inspect.signature(create_causal_mask).parameters
    kwargs = {"cache" if "cache" in params else "past_key_values": cache}  # 5.24 renamed it
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(past, total, device=q.device)
    positions = torch.arange(past, total, device=q.device).expand(batch, s)
    mask = create_causal_mask(config, probe, None, position_ids=positions, **kwargs)
    out, _weights = hf_attr(family, "eager_attention_forward")(
        module, q, k, v, mask, scaling=module.scaling, dropout=0.0
    )
    return out


@reference("moe_router")
def _moe_router(config, family, baseline, inputs):
    """The family's TopKRouter forward fed the logits themselves: a router over hidden size E whose
    weight is the identity, so its F.linear hands the logits through unchanged (x @ I is exact:
    every product but one is a zero) and the rest of its forward is HF's own code."""
    import copy

    (logits,) = inputs
    experts = logits.shape[-1]
    cfg = copy.deepcopy(config)
    cfg.hidden_size = experts
    router = hf_attr(family, _hf_name(1, "moe_router", family))(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.eye(experts))
    router = router.to(device=logits.device, dtype=logits.dtype)
    _logits, weights, indices = router(logits)
    return weights, indices


@reference("embedding")
def _embedding(config, family, baseline, inputs):
    (input_ids,) = inputs
    hf = torch.nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
    return _with_weights(hf, baseline)(input_ids)


from fastkernels.registry import oracles_blocks  # noqa: E402,F401  (registers the L2-L4 references)
