"""The whole causal language model forward (HF <Family>ForCausalLM) over a KV cache, with the
memory-bound parts in Triton kernels and the GEMMs in torch:

    h       = embed_tokens(input_ids)                 gather
    cos, sin of positions P..P+S-1                    rotary angles (with Llama 3's scaling)
    x       = RMSNorm_0(h)                            Triton
    per layer:
        a, k, v = self_attn(x)                        q/k/v GEMMs; ONE Triton pass per q and k for
                                                      Qwen3's per-head RMSNorm + rotary; attention
        h, x    = h + a, RMSNorm(h + a)               Triton: residual add fused with the norm
        m       = mlp(x)                              GEMMs + Triton silu-and-mul, or the MoE block
                                                      (Triton router, per-expert GEMMs, Triton
                                                      silu-and-mul and weighted combine)
        h, x    = h + m, next RMSNorm(h + m)          Triton: residual add fused with the next
                                                      layer's input norm (the final norm after the
                                                      last layer)
    logits  = lm_head(x)                              GEMM

Rounding as the baseline: every residual sum rounds to the activations' dtype; RMSNorm casts the
normalised value to that dtype before the weight multiply; silu rounds before its multiply; rotary
rounds each product and their sum; routing weights and the expert sum round as the baseline's
expert loop does. bf16 rounding is done on the bits (round to nearest even), so the Triton
interpreter, whose casts truncate, rounds as the GPU does.

Attention: on CUDA F.scaled_dot_product_attention (bottom-right causal mask: none for one new
token, is_causal with no past, an explicit mask otherwise); elsewhere the eager computation with
eager's rounding points, so a CPU run reproduces the reference model's greedy tokens.
Returns (logits [B, S, V], keys, values): layer i's new cache entries for these S tokens.
"""

import math

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F


# fastkernels: include rnd


# fastkernels: include ops


# fastkernels: include rope_attention


# fastkernels: include norm_self_attention


# fastkernels: include mlp

# fastkernels: include moe


class DecoderLayer(nn.Module):
    def __init__(self, attention: nn.Module, mlp: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value):
        ln1, ln2 = self.input_layernorm, self.post_attention_layernorm
        _, x = add_rms_norm(hidden_states, None, ln1.weight, ln1.variance_epsilon)
        a, key, value = self.self_attn(x, cos, sin, past_key, past_value)
        h, x = add_rms_norm(a, hidden_states, ln2.weight, ln2.variance_epsilon)
        return h + self.mlp(x), key, value


def rope_inv_freq(rope: dict, head_dim: int, device) -> torch.Tensor:
    """The rotary inverse frequencies [D/2] in fp32, as HF computes them ("default", and Llama 3's
    "llama3": long wavelengths divided by `factor`, short ones kept, the band between interpolated)."""
    base = rope["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    if rope["rope_type"] == "default":
        return inv_freq
    if rope["rope_type"] != "llama3":
        raise ValueError(f"rope type {rope['rope_type']!r} is not implemented")
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, eps: float, layers: list):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(hidden_size, eps)


class CausalLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        intermediate_size: int,
        eps: float,
        qkv_bias: bool,
        qk_norm: bool,
        rope: dict,
        tie_word_embeddings: bool = False,
        o_bias: bool = False,
        mlp_bias: bool = False,
        moe: dict | None = None,
    ):
        super().__init__()
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.rope = dict(rope)
        dense_layers = set(moe.get("dense_layers", [])) if moe else set(range(num_layers))
        layers = []
        for i in range(num_layers):
            attention = SelfAttention(hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias)
            if i in dense_layers:
                mlp = MLP(hidden_size, intermediate_size, mlp_bias)
            else:
                mlp = MoEBlock(hidden_size, moe["intermediate_size"], moe["num_experts"], moe["top_k"],
                               moe["norm_topk_prob"], moe.get("round_routing_weights", False))
            layers.append(DecoderLayer(attention, mlp, hidden_size, eps))
        self.model = Decoder(vocab_size, hidden_size, eps, layers)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rotary(self, past: int, seq: int, dtype, device):
        """cos, sin [1, S, D] of positions past..past+seq-1, computed in fp32 and cast to `dtype`
        (inv_freq is computed here, in fp32, not kept as a buffer that .to(bfloat16) would round)."""
        inv_freq = rope_inv_freq(self.rope, self.head_dim, device)
        positions = torch.arange(past, past + seq, device=device)[None, :]
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids, past_keys=None, past_values=None):
        b, s = input_ids.shape
        h = F.embedding(input_ids, self.model.embed_tokens.weight)
        layers = list(self.model.layers)
        if past_keys is None:
            empty = h.new_empty(b, self.num_kv_heads, 0, self.head_dim)
            past_keys = past_values = [empty] * len(layers)
        past = past_keys[0].shape[2] if len(past_keys) else 0
        cos, sin = self.rotary(past, s, h.dtype, h.device)
        cos, sin = cos.expand(b, s, self.head_dim), sin.expand(b, s, self.head_dim)
        norms = [layer.input_layernorm for layer in layers[1:]] + [self.model.norm]
        first = layers[0].input_layernorm if layers else self.model.norm
        _, x = add_rms_norm(h, None, first.weight, first.variance_epsilon)
        keys, values = [], []
        for layer, nxt, past_key, past_value in zip(layers, norms, past_keys, past_values):
            a, key, value = layer.self_attn(x, cos, sin, past_key, past_value)
            ln2 = layer.post_attention_layernorm
            h, x = add_rms_norm(a, h, ln2.weight, ln2.variance_epsilon)  # h + attention, its norm
            h, x = add_rms_norm(layer.mlp(x), h, nxt.weight, nxt.variance_epsilon)  # h + mlp, the next norm
            keys.append(key)
            values.append(value)
        return F.linear(x, self.lm_head.weight), keys, values
