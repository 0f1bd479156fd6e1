"""The whole causal language model forward (HF <Family>ForCausalLM), over a KV cache:

    h      = embed_tokens(input_ids)                            [B, S, H]
    cos, sin of positions P..P+S-1                              rotary angles (with the rope scaling)
    for each layer:
        h  = h + self_attn(input_layernorm(h), cos, sin, cache) (pre-norm attention, residual)
        h  = h + mlp(post_attention_layernorm(h))               (SwiGLU MLP, or sparse MoE)
    logits = lm_head(norm(h))                                   [B, S, V]

input_ids [B, S] are the S new tokens of each sequence; past_keys[i], past_values[i]
[B, Hkv, P, D] are layer i's cached keys (after rope) and values for the P tokens before them
(P may be 0: empty tensors, or None for no cache at all). Attention is grouped-query (each of the
Hkv key/value heads serves Hq / Hkv query heads), causal and aligned bottom-right (new token i sees
keys 0..P+i), softmax in fp32. Qwen2 has biases on q/k/v; Qwen3 normalises q and k per head
(RMSNorm over D) before rope. MoE layers: the router (gate) scores the E experts per token, softmax
in fp32, top-k, renormalised if norm_topk_prob (Mixtral: always); a token's output is the sum of
its K experts' down(silu(gate(x)) * up(x)) scaled by their routing weights (fp32 for Mixtral,
rounded to the activations' dtype first for Qwen3-MoE). Expert weights are fused:
experts.gate_up_proj [E, 2I, H] (gate rows first), experts.down_proj [E, H, I]. With tied
embeddings lm_head shares embed_tokens' weight. Returns (logits [B, S, V], keys, values) where
keys[i], values[i] [B, Hkv, S, D] are layer i's new cache entries for these S tokens."""

import math

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(input_dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        self.qk_norm = qk_norm
        if qk_norm:  # Qwen3: RMSNorm over each head's D, before rope
            self.q_norm = RMSNorm(head_dim, eps)
            self.k_norm = RMSNorm(head_dim, eps)

    def repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, L, D] -> [B, Hq, L, D]: each key/value head repeated for its query heads."""
        b, hkv, length, d = x.shape
        n_rep = self.num_heads // hkv
        if n_rep == 1:
            return x
        return x[:, :, None, :, :].expand(b, hkv, n_rep, length, d).reshape(b, hkv * n_rep, length, d)

    def forward(self, hidden_states, cos, sin, past_key, past_value):
        b, s, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(b, s, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, D]

        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)

        keys = torch.cat([past_key, k], dim=2)  # [B, Hkv, P+S, D]
        values = torch.cat([past_value, v], dim=2)
        past = keys.shape[2] - s

        scores = torch.matmul(q, self.repeat_kv(keys).transpose(2, 3)) * self.scaling
        query_pos = torch.arange(past, past + s, device=q.device)[:, None]
        key_pos = torch.arange(past + s, device=q.device)[None, :]
        mask = torch.where(key_pos <= query_pos, 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        probs = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
        attn = torch.matmul(probs, self.repeat_kv(values))  # [B, Hq, S, D]
        attn = attn.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(attn), k, v


class Experts(nn.Module):
    """The E experts' weights, fused into two 3-D tensors (transformers 5 layout)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))


class MoEBlock(nn.Module):
    def __init__(self, hidden_size, intermediate_size, num_experts, top_k, norm_topk_prob, round_routing_weights):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.round_routing_weights = round_routing_weights
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)  # the router
        self.experts = Experts(num_experts, hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        x = x.reshape(b * s, h)
        probs = F.softmax(self.gate(x).float(), dim=-1)  # [T, E]
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [T, K]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.round_routing_weights:
            weights = weights.to(x.dtype)

        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            # the tokens that picked expert e, in HF's order (by pick rank, then token): a row's
            # place in the matmul can change its fp32 rounding (measured 6e-7 on tiny Mixtral)
            slot, token = torch.where(experts.t() == e)
            if token.numel() == 0:
                continue
            gate, up = F.linear(x[token], self.experts.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.experts.down_proj[e])
            y = y * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out.reshape(b, s, h)


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, attention: nn.Module, mlp: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value):
        residual = hidden_states
        h, key, value = self.self_attn(self.input_layernorm(hidden_states), cos, sin, past_key, past_value)
        h = residual + h
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, key, value


def rope_inv_freq(rope: dict, head_dim: int, device) -> torch.Tensor:
    """The rotary inverse frequencies [D/2] in fp32, as HF computes them ("default" and Llama 3's
    "llama3" frequency-dependent scaling)."""
    base = rope["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    if rope["rope_type"] == "default":
        return inv_freq
    if rope["rope_type"] != "llama3":
        raise ValueError(f"rope type {rope['rope_type']!r} is not implemented")
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low
    high_freq_wavelen = old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are divided by `factor`, short ones kept, the band between interpolated
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


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
                mlp = MoEBlock(
                    hidden_size,
                    moe["intermediate_size"],
                    moe["num_experts"],
                    moe["top_k"],
                    moe["norm_topk_prob"],
                    moe.get("round_routing_weights", False),
                )
            layers.append(DecoderLayer(attention, mlp, hidden_size, eps))
        self.model = Decoder(vocab_size, hidden_size, eps, layers)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rotary(self, past: int, seq: int, dtype, device):
        """cos, sin [1, S, D] of positions past..past+seq-1, computed in fp32 and cast to `dtype`.
        inv_freq is computed here rather than kept as a buffer: module.to(bfloat16) would round a
        buffer, while HF keeps its inv_freq in fp32."""
        inv_freq = rope_inv_freq(self.rope, self.head_dim, device)
        positions = torch.arange(past, past + seq, device=device)[None, :]
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids, past_keys=None, past_values=None):
        b, s = input_ids.shape
        h = self.model.embed_tokens(input_ids)
        if past_keys is None:
            empty = h.new_empty(b, self.num_kv_heads, 0, self.head_dim)
            past_keys = past_values = [empty] * len(self.model.layers)
        past = past_keys[0].shape[2]
        cos, sin = self.rotary(past, s, h.dtype, h.device)
        keys, values = [], []
        for layer, past_key, past_value in zip(self.model.layers, past_keys, past_values):
            h, key, value = layer(h, cos, sin, past_key, past_value)
            keys.append(key)
            values.append(value)
        logits = self.lm_head(self.model.norm(h))
        return logits, keys, values


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "CausalLM"
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
# Prefill is matmuls over S tokens (compute-bound); decode reads every weight and the whole KV
# cache for one token per sequence (memory-bound). Each shape names its ceiling.
BOUND = "compute"


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope(config):
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:  # configs that predate rope_parameters
        params = {**(getattr(config, "rope_scaling", None) or {}), "rope_theta": config.rope_theta}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "llama3") or params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"rope {params} is not implemented by the CausalLM baseline")
    rope = {"rope_type": rope_type, "rope_theta": float(params["rope_theta"])}
    if rope_type == "llama3":
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            rope[key] = float(params[key])
        rope["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
    return rope


def _moe(config):
    """The MoE settings of a Mixtral / Qwen3-MoE config (None for a dense model)."""
    if config.model_type == "mixtral":
        return {
            "num_experts": config.num_local_experts,
            "top_k": config.num_experts_per_tok,
            "intermediate_size": config.intermediate_size,
            "norm_topk_prob": True,
            "round_routing_weights": False,
            "dense_layers": [],
        }
    if config.model_type == "qwen3_moe":
        only = set(getattr(config, "mlp_only_layers", None) or [])
        step = config.decoder_sparse_step
        dense = [
            i
            for i in range(config.num_hidden_layers)
            if i in only or not (config.num_experts > 0 and (i + 1) % step == 0)
        ]
        return {
            "num_experts": config.num_experts,
            "top_k": config.num_experts_per_tok,
            "intermediate_size": config.moe_intermediate_size,
            "norm_topk_prob": bool(config.norm_topk_prob),
            "round_routing_weights": True,
            "dense_layers": dense,
        }
    return None


def init_args(config):
    if config.hidden_act != "silu":
        raise ValueError(f"CausalLM baseline implements silu, the config asks for {config.hidden_act!r}")
    bias = bool(getattr(config, "attention_bias", False))
    qwen2 = config.model_type == "qwen2"  # Qwen2: biases on q/k/v only, never on o
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": _head_dim(config),
        "intermediate_size": config.intermediate_size,
        "eps": config.rms_norm_eps,
        "qkv_bias": True if qwen2 else bias,
        "qk_norm": config.model_type in ("qwen3", "qwen3_moe"),
        "rope": _rope(config),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "o_bias": False if qwen2 else bias,
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        "moe": _moe(config),
    }


# The unit benchmark's depth: every layer of a model runs the same code at the same width, and a
# full-depth copy does not fit one GPU three times over (candidate, baseline, fp32 reference: an 8B
# model in fp32 is 32 GB). The unit shapes keep the model's full width and vocabulary with this
# many layers; the end-to-end benchmark runs the candidate over all of them in the real model.
UNIT_LAYERS = 2


def shapes(config, workload):
    layers = min(config.num_hidden_layers, UNIT_LAYERS)
    extra = {"layers": layers, "init": {"num_layers": layers}} if layers < config.num_hidden_layers else {}
    return {
        "prefill": {"batch": workload.batch, "seq": workload.prefill_len, "past": 0, "bound": "compute", **extra},
        "decode": {"batch": workload.batch, "seq": 1, "past": workload.decode_context, "bound": "memory", **extra},
    }


def make_inputs(config, shape, dtype, device, generator):
    b, s, p, d = shape["batch"], shape["seq"], shape["past"], _head_dim(config)
    hkv = config.num_key_value_heads
    input_ids = torch.randint(0, config.vocab_size, (b, s), device=device, generator=generator)

    def draw(*size):
        return torch.randn(*size, dtype=torch.float32, device=device, generator=generator).to(dtype)

    layers = shape.get("layers", config.num_hidden_layers)
    past_keys = [draw(b, hkv, p, d) for _ in range(layers)]
    past_values = [draw(b, hkv, p, d) for _ in range(layers)]
    return input_ids, past_keys, past_values


def cost(config, shape, dtype):
    b, s, p, d = shape["batch"], shape["seq"], shape["past"], _head_dim(config)
    h, v, n = config.hidden_size, config.vocab_size, shape.get("layers", config.num_hidden_layers)
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    size = torch.empty((), dtype=dtype).element_size()
    tokens = b * s
    moe = _moe(config)
    dense = set(moe["dense_layers"]) if moe else set(range(n))
    attn_weights = h * (hq + 2 * hkv) * d + hq * d * h
    pairs = b * hq * (s * p + s * (s + 1) // 2)  # causal (query, key) pairs a good kernel computes
    flops = n * (2 * tokens * attn_weights + 4 * pairs * d) + 2 * tokens * h * v  # + lm_head
    weights = n * (attn_weights + 2 * h) + h + v * h * (1 if config.tie_word_embeddings else 2)
    for i in range(n):
        if i in dense:
            flops += 6 * tokens * h * config.intermediate_size
            weights += 3 * h * config.intermediate_size
        else:
            e, k, inter = moe["num_experts"], moe["top_k"], moe["intermediate_size"]
            flops += 2 * tokens * h * e + tokens * k * 6 * h * inter
            weights += h * e + min(e, tokens * k) * 3 * h * inter  # experts read at least once
    if not config.tie_word_embeddings:
        weights -= v * h - tokens * h  # of the embedding table only the looked-up rows are read
    moved = (
        weights
        + tokens * v  # write logits
        + n * 2 * b * hkv * p * d  # read the cache
        + n * 2 * tokens * hkv * d  # write the new keys/values
    ) * size
    return {"bytes": moved, "flops": flops}
