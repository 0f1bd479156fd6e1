"""One decoder layer of a mixture-of-experts model (HF <Family>DecoderLayer) over a KV cache, with the
memory-bound parts in Triton kernels and the GEMMs in torch:

    x      = RMSNorm(hidden)                          Triton, one pass per row
    a, k, v = self_attn(x)                            q/k/v GEMMs; ONE Triton pass per q and k for
                                                      Qwen3's per-head RMSNorm + rotary; attention
    h, x   = hidden + a, RMSNorm(hidden + a)          Triton: the residual add fused with the norm
    out    = h + moe(x)                               router GEMM; Triton softmax/top-k/renormalise;
                                                      per-expert GEMMs over the tokens routed to
                                                      it, silu-and-mul in Triton; a Triton pass sums
                                                      each token's K weighted expert outputs

Rounding as the baseline: every residual sum rounds to the activations' dtype; RMSNorm casts the
normalised value to that dtype before the weight multiply; silu rounds before its multiply; routing weights and the expert sum round as the
baseline's expert loop does; rotary
rounds each product and their sum. bf16 rounding is done on the bits (round to nearest even), so
the Triton interpreter, whose casts truncate, rounds as the GPU does.

Attention: on CUDA F.scaled_dot_product_attention (bottom-right causal mask: none for one new
token, is_causal with no past, an explicit mask otherwise); elsewhere the eager computation with
eager's rounding points, so a CPU run reproduces the reference model's greedy tokens.
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


# fastkernels: include moe


class MoEDecoderLayer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float,
        qkv_bias: bool,
        qk_norm: bool,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        round_routing_weights: bool = False,
        o_bias: bool = False,
    ):
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias)
        self.mlp = MoEBlock(hidden_size, intermediate_size, num_experts, top_k, norm_topk_prob, round_routing_weights)
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value, cache_position=None):
        ln1, ln2 = self.input_layernorm, self.post_attention_layernorm
        _, x = add_rms_norm(hidden_states, None, ln1.weight, ln1.variance_epsilon)
        a, key, value = self.self_attn(x, cos, sin, past_key, past_value, cache_position)
        h, x = add_rms_norm(a, hidden_states, ln2.weight, ln2.variance_epsilon)  # residual add + norm, one pass
        return h + self.mlp(x), key, value
