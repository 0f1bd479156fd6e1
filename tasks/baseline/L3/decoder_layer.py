"""One decoder layer of a dense model (HF <Family>DecoderLayer), over a KV cache:

    h   = x + self_attn(input_layernorm(x))                (pre-norm attention, residual)
    out = h + mlp(post_attention_layernorm(h))             (pre-norm SwiGLU MLP, residual)

self_attn: q, k, v projections (biases on q/k/v for Qwen2), Qwen3's per-head RMSNorm on q and k,
rotary embedding with the given cos/sin, grouped-query causal attention over the P cached tokens
plus the S new ones (softmax in fp32), output projection. mlp: down(silu(gate(x)) * up(x)).
RMSNorm: weight * (x / sqrt(mean(x**2) + eps)), reduced in fp32, cast back before the weight.

hidden_states is [B, S, H]; cos, sin [B, S, D] are the rotary angles of positions P..P+S-1
(in the activations' dtype); past_key, past_value [B, Hkv, P, D] are the layer's cached keys
(after rope) and values (P may be 0). The causal mask is aligned bottom-right: new token i sees
keys 0..P+i. Returns (hidden [B, S, H], key [B, Hkv, S, D], value [B, Hkv, S, D]) where key/value
are this step's new cache entries (key after rope).

The static-cache form (HF `cache_implementation="static"`, the path a compiled decode step takes):
with `cache_position` (int64 [S], this step's slots in the cache, consecutive), past_key and
past_value are the layer's whole preallocated buffers [B, Hkv, L, D], of which only rows
0..cache_position[0]-1 hold keys; the rows from cache_position[0] on are stale and must not be
attended. New token i sees those valid rows and the new keys 0..i. The caller writes the returned
key/value into the buffers afterwards. Nothing of cache_position may be read on the host (no
.item()): the step is replayed as a CUDA graph, with the same buffers, at every position."""

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

    def forward(self, hidden_states, cos, sin, past_key, past_value, cache_position=None):
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
        seen = key_pos <= query_pos
        if cache_position is not None:  # the valid rows of the static buffer, then the new keys causally
            seen = (key_pos < cache_position[:1, None]) | ((key_pos >= past) & seen)
        mask = torch.where(seen, 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        probs = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
        attn = torch.matmul(probs, self.repeat_kv(values))  # [B, Hq, S, D]
        attn = attn.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(attn), k, v


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
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
        o_bias: bool = False,
        mlp_bias: bool = False,
    ):
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias)
        self.mlp = MLP(hidden_size, intermediate_size, mlp_bias)
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value, cache_position=None):
        residual = hidden_states
        h, key, value = self.self_attn(self.input_layernorm(hidden_states), cos, sin, past_key, past_value,
                                       cache_position)
        h = residual + h
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, key, value


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "DecoderLayer"
STATIC_SLACK = 16  # stale rows past the valid ones in the static-cache shape's buffers
FAMILIES = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
}
# Prefill is matmuls over S tokens (compute-bound); decode reads every weight and the layer's KV
# cache for one token per sequence (memory-bound). Each shape names its ceiling.
BOUND = "compute"


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def init_args(config):
    if config.hidden_act != "silu":
        raise ValueError(f"DecoderLayer baseline implements silu, the config asks for {config.hidden_act!r}")
    bias = bool(getattr(config, "attention_bias", False))
    qwen2 = config.model_type == "qwen2"  # Qwen2: biases on q/k/v only, never on o
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": _head_dim(config),
        "eps": config.rms_norm_eps,
        "qkv_bias": True if qwen2 else bias,
        "qk_norm": config.model_type in ("qwen3", "qwen3_moe"),
        "o_bias": False if qwen2 else bias,
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
    }


def shapes(config, workload):
    return {
        "prefill": {"batch": workload.batch, "seq": workload.prefill_len, "past": 0, "bound": "compute"},
        "decode": {"batch": workload.batch, "seq": 1, "past": workload.decode_context, "bound": "memory"},
        # a compiled decode step over HF's static cache: the buffers have STATIC_SLACK stale rows more
        "decode_static": {"batch": workload.batch, "seq": 1, "past": workload.decode_context,
                          "max_len": workload.decode_context + STATIC_SLACK, "bound": "memory"},
    }


def rotary_cos_sin(config, batch, seq, past, dtype, device):
    """cos, sin [batch, seq, D] of positions past..past+seq-1, from the family's HF rotary module
    (so Llama 3's rope scaling is the real one)."""
    import importlib

    family = config.model_type
    hf = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    prefix = FAMILIES[family][: -len("DecoderLayer")]  # "LlamaDecoderLayer" -> "Llama"
    rope = getattr(hf, f"{prefix}RotaryEmbedding")(config=config).to(device)
    positions = torch.arange(past, past + seq, device=device).expand(batch, seq)
    return rope(torch.empty(0, dtype=dtype, device=device), positions)


def make_inputs(config, shape, dtype, device, generator):
    b, s, p, d = shape["batch"], shape["seq"], shape["past"], _head_dim(config)
    hkv = config.num_key_value_heads

    def draw(*size):
        return torch.randn(*size, dtype=torch.float32, device=device, generator=generator).to(dtype)

    cos, sin = rotary_cos_sin(config, b, s, p, dtype, device)
    if "max_len" in shape:  # the static-cache form: whole buffers (stale rows random too), the slots
        length = shape["max_len"]
        return (draw(b, s, config.hidden_size), cos, sin, draw(b, hkv, length, d), draw(b, hkv, length, d),
                torch.arange(p, p + s, device=device))
    return draw(b, s, config.hidden_size), cos, sin, draw(b, hkv, p, d), draw(b, hkv, p, d)


def cost(config, shape, dtype):
    b, s, p, d = shape["batch"], shape["seq"], shape["past"], _head_dim(config)
    h, i = config.hidden_size, config.intermediate_size
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    size = torch.empty((), dtype=dtype).element_size()
    tokens = b * s
    weights = h * (hq + 2 * hkv) * d + hq * d * h + 3 * h * i + 2 * h
    pairs = b * hq * (s * p + s * (s + 1) // 2)  # causal (query, key) pairs a good kernel computes
    flops = 2 * tokens * (weights - 2 * h) + 4 * pairs * d
    moved = (
        weights
        + 2 * tokens * h  # read hidden_states, write hidden
        + 2 * tokens * d  # cos, sin
        + 2 * b * hkv * p * d  # read the cache
        + 2 * tokens * hkv * d  # write the new key/value
    ) * size
    return {"bytes": moved, "flops": flops}
