"""The self-attention block (HF <Family>Attention) over a KV cache, with its memory-bound parts in
one Triton pass per projection:

    q, k, v = q_proj(x), k_proj(x), v_proj(x)           torch GEMMs (F.linear; biases for Qwen2)
    q, k    = rope(qk_norm(q)), rope(qk_norm(k))        ONE Triton kernel per tensor: the per-head
                                                        RMSNorm (Qwen3) and the rotary embedding,
                                                        read once, written once, in cache layout
    K, V    = cat(past, new)
    out     = o_proj(SDPA(q, K, V, causal bottom-right, GQA))

The rotary kernel reads a head's row as its two halves (rotate_half pairs element i with i + D/2),
so the norm's sum of squares and the rotation need no shuffles. Rounding as the baseline: the norm
casts the normalised value to the input dtype before the weight multiply (and the product rounds
again); q*cos and rotate_half(q)*sin round to the input dtype, then their sum does.

The static-cache form (cache_position given: the whole preallocated buffers, valid up to
cache_position[0]) concatenates the new keys after the buffers and masks the stale rows out with a
boolean mask built on the device (static_mask), so a compiled decode step has static shapes and
reads nothing on the host.

Attention: F.scaled_dot_product_attention. Its is_causal mask is aligned top-left, the baseline's
bottom-right (new token i sees keys 0..P+i): with no past (P = 0) both agree; with one new token
(decode) it sees every key, so no mask at all; otherwise an explicit boolean mask is built.
"""

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F


# fastkernels: include rnd


# fastkernels: include ops


# fastkernels: include rope_attention


# fastkernels: include norm_self_attention


class AttentionBlock(SelfAttention):
    """The decoder layers' self-attention as the level-2 block (its RMSNorm modules hold the
    Qwen3 per-head q/k norm weights, applied inside the rotary kernel)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float,
                 qkv_bias: bool, qk_norm: bool, o_bias: bool = False):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias)

    def forward(self, hidden_states, cos, sin, past_key, past_value, cache_position=None):
        return super().forward(hidden_states, cos, sin, past_key, past_value, cache_position)
