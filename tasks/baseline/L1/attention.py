"""Causal grouped-query attention over a KV cache (the core of HF eager_attention_forward).

q [B, Hq, S, D] are the S new tokens' queries; k, v [B, Hkv, P+S, D] hold the P cached tokens'
keys and values followed by the S new ones. Each of the Hkv key/value heads serves Hq / Hkv query
heads. The causal mask is aligned bottom-right: new token i (0-based) sits at position P + i and
sees keys 0..P+i. Scores are scaled by `scaling` (1/sqrt(D)), the softmax runs in fp32 and its
probabilities are cast back to q's dtype before the multiply with v. The output is [B, S, Hq, D]
(contiguous), the layout the HF attention interface returns before the output projection.
Prefill: P = 0, S = prompt length. Decode: S = 1 new token over P cached ones.

The static-cache form (HF `cache_implementation="static"`, the path a compiled decode step takes):
with `cache_position` (int64 [S], the slots of the S new tokens, consecutive), k and v are the
layer's whole preallocated buffers [B, Hkv, L, D] with this step's keys/values already written at
those slots; rows after the last slot are stale and must not be attended. New token i sees keys
0..cache_position[i]. Nothing of cache_position may be read on the host (no .item()): the step is
replayed as a CUDA graph, with the same buffers, at every position."""

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling

    def repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, L, D] -> [B, Hq, L, D]: each key/value head repeated for its query heads."""
        b, hkv, length, d = x.shape
        n_rep = self.num_heads // hkv
        if n_rep == 1:
            return x
        return x[:, :, None, :, :].expand(b, hkv, n_rep, length, d).reshape(b, hkv * n_rep, length, d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_position=None) -> torch.Tensor:
        s, total = q.shape[2], k.shape[2]
        past = total - s
        k = self.repeat_kv(k)
        v = self.repeat_kv(v)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling  # [B, Hq, S, P+S]
        query_pos = torch.arange(past, total, device=q.device)[:, None]
        if cache_position is not None:  # the slots of the new tokens in the static buffers
            query_pos = cache_position[:, None]
        key_pos = torch.arange(total, device=q.device)[None, :]
        mask = torch.where(key_pos <= query_pos, 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        scores = scores + mask
        probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v)  # [B, Hq, S, D]
        return out.transpose(1, 2).contiguous()


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "Attention"
FAMILIES = {
    "llama": "eager_attention_forward (modeling_llama, called by LlamaAttention)",
    "mistral": "eager_attention_forward (modeling_mistral, called by MistralAttention)",
    "mixtral": "eager_attention_forward (modeling_mixtral, called by MixtralAttention)",
    "qwen2": "eager_attention_forward (modeling_qwen2, called by Qwen2Attention)",
    "qwen3": "eager_attention_forward (modeling_qwen3, called by Qwen3Attention)",
    "qwen3_moe": "eager_attention_forward (modeling_qwen3_moe, called by Qwen3MoeAttention)",
}
# Prefill is a pair of big matmuls (compute-bound); decode streams the KV cache once per token
# for one query row per head (memory-bound). Each shape says which ceiling it is measured against.
BOUND = "compute"
STATIC_SLACK = 16  # stale rows past the last written slot in the static-cache shape's buffers


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def init_args(config):
    head_dim = _head_dim(config)
    return {
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": head_dim,
        "scaling": head_dim**-0.5,
    }


def shapes(config, workload):
    return {
        "prefill": {"batch": workload.batch, "seq": workload.prefill_len, "past": 0, "bound": "compute"},
        "decode": {"batch": workload.batch, "seq": 1, "past": workload.decode_context, "bound": "memory"},
        # a compiled decode step over HF's static cache: the buffers have STATIC_SLACK stale rows more
        "decode_static": {"batch": workload.batch, "seq": 1, "past": workload.decode_context,
                          "max_len": workload.decode_context + 1 + STATIC_SLACK, "bound": "memory"},
    }


def make_inputs(config, shape, dtype, device, generator):
    b, s, p, d = shape["batch"], shape["seq"], shape["past"], _head_dim(config)
    hq, hkv = config.num_attention_heads, config.num_key_value_heads

    def draw(*size):
        return torch.randn(*size, dtype=torch.float32, device=device, generator=generator).to(dtype)

    # Unit-scale q and k (as after the projections and rope) give scores of std ~1 after the
    # 1/sqrt(D) scaling: a softmax that is neither flat nor one-hot.
    if "max_len" in shape:  # the static-cache form: whole buffers (stale rows random too), the slots
        length = shape["max_len"]
        return (draw(b, hq, s, d), draw(b, hkv, length, d), draw(b, hkv, length, d),
                torch.arange(p, p + s, device=device))
    return draw(b, hq, s, d), draw(b, hkv, p + s, d), draw(b, hkv, p + s, d)


def cost(config, shape, dtype):
    b, s, p, d = shape["batch"], shape["seq"], shape["past"], _head_dim(config)
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    size = torch.empty((), dtype=dtype).element_size()
    total = p + s
    # Useful work only: pairs above the causal diagonal are skipped by a good kernel.
    pairs = b * hq * (s * p + s * (s + 1) // 2)
    moved = (2 * b * hq * s * d + 2 * b * hkv * total * d) * size  # read q, k, v; write out
    return {"bytes": moved, "flops": 4 * pairs * d}
