"""Rotary position embedding applied to the query and key heads (HF apply_rotary_pos_emb):
    q_rot = q * cos + rotate_half(q) * sin,   k_rot = k * cos + rotate_half(k) * sin
where rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]). cos and sin [B, S, D] hold each token's
angles, already computed by the model's rotary embedding (with its scaling, e.g. Llama 3's) and
already in the activations' dtype; they broadcast over the head dimension. q is [B, Hq, S, D],
k is [B, Hkv, S, D] (grouped-query attention: fewer key heads than query heads)."""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        cos = cos.unsqueeze(1)  # [B, 1, S, D]: the same angles for every head
        sin = sin.unsqueeze(1)
        q_rot = (q * cos) + (self.rotate_half(q) * sin)
        k_rot = (k * cos) + (self.rotate_half(k) * sin)
        return q_rot, k_rot


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "RotaryEmbedding"
FAMILIES = {
    "llama": "apply_rotary_pos_emb (modeling_llama; cos/sin from LlamaRotaryEmbedding)",
    "mistral": "apply_rotary_pos_emb (modeling_mistral; cos/sin from MistralRotaryEmbedding)",
    "mixtral": "apply_rotary_pos_emb (modeling_mixtral; cos/sin from MixtralRotaryEmbedding)",
    "qwen2": "apply_rotary_pos_emb (modeling_qwen2; cos/sin from Qwen2RotaryEmbedding)",
    "qwen3": "apply_rotary_pos_emb (modeling_qwen3; cos/sin from Qwen3RotaryEmbedding)",
    "qwen3_moe": "apply_rotary_pos_emb (modeling_qwen3_moe; cos/sin from Qwen3MoeRotaryEmbedding)",
}
# The HF module that computes each family's cos/sin (make_inputs uses it, so rope scaling is real).
ROTARY_CLASSES = {
    "llama": "LlamaRotaryEmbedding",
    "mistral": "MistralRotaryEmbedding",
    "mixtral": "MixtralRotaryEmbedding",
    "qwen2": "Qwen2RotaryEmbedding",
    "qwen3": "Qwen3RotaryEmbedding",
    "qwen3_moe": "Qwen3MoeRotaryEmbedding",
}
BOUND = "memory"


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def init_args(config):
    return {"head_dim": _head_dim(config)}


def shapes(config, workload):
    dims = {
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": _head_dim(config),
    }
    return {
        "prefill": {"batch": workload.batch, "seq": workload.prefill_len, "past": 0, **dims},
        "decode": {"batch": workload.batch, "seq": 1, "past": workload.decode_context, **dims},
    }


def rotary_cos_sin(config, batch, seq, past, dtype, device):
    """cos, sin [batch, seq, head_dim] of positions past..past+seq-1, from the family's HF module."""
    import importlib

    family = config.model_type
    hf = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    rope = getattr(hf, ROTARY_CLASSES[family])(config=config).to(device)
    positions = torch.arange(past, past + seq, device=device).expand(batch, seq)
    probe = torch.empty(0, dtype=dtype, device=device)  # tells the module the dtype and device
    return rope(probe, positions)


def make_inputs(config, shape, dtype, device, generator):
    b, s, d = shape["batch"], shape["seq"], shape["head_dim"]
    q = torch.randn(b, shape["heads"], s, d, dtype=torch.float32, device=device, generator=generator)
    k = torch.randn(b, shape["kv_heads"], s, d, dtype=torch.float32, device=device, generator=generator)
    # positions from a random start at or past the shape's (every seed its own angles: a kernel
    # cannot keep a table of its own), within the model's context
    room = max(1, getattr(config, "max_position_embeddings", 4096) - shape["past"] - s)
    start = shape["past"] + int(torch.randint(0, room, (1,), generator=generator, device=generator.device))
    cos, sin = rotary_cos_sin(config, b, s, start, dtype, device)
    return q.to(dtype), k.to(dtype), cos, sin


def cost(config, shape, dtype):
    b, s, d = shape["batch"], shape["seq"], shape["head_dim"]
    heads = shape["heads"] + shape["kv_heads"]
    size = torch.empty((), dtype=dtype).element_size()
    # read and write q and k, read cos and sin; 3 flops (2 mul, 1 add) per output element
    return {"bytes": (2 * b * heads * s * d + 2 * b * s * d) * size, "flops": 3 * b * heads * s * d}
