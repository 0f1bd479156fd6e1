"""SiLU-and-multiply, the gated activation of the SwiGLU MLP: out = silu(gate) * up, where gate
and up are the outputs of the MLP's gate and up projections."""

import torch
from torch import nn
from torch.nn import functional as F


class SiluAndMul(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate) * up


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "SiluAndMul"
FAMILIES = {
    "llama": "LlamaMLP (act_fn(gate_proj(x)) * up_proj(x))",
    "mistral": "MistralMLP (act_fn(gate_proj(x)) * up_proj(x))",
    "mixtral": "MixtralExperts (act_fn(gate) * up per expert)",
    "qwen2": "Qwen2MLP (act_fn(gate_proj(x)) * up_proj(x))",
    "qwen3": "Qwen3MLP (act_fn(gate_proj(x)) * up_proj(x))",
    "qwen3_moe": "Qwen3MoeExperts (act_fn(gate) * up per expert)",
}
BOUND = "memory"


def _width(config):
    if config.model_type in ("qwen3_moe",):
        return config.moe_intermediate_size
    return config.intermediate_size


def init_args(config):
    return {}


def shapes(config, workload):
    return {
        "prefill": {"tokens": workload.batch * workload.prefill_len, "width": _width(config)},
        "decode": {"tokens": workload.batch, "width": _width(config)},
    }


def make_inputs(config, shape, dtype, device, generator):
    size = (shape["tokens"], shape["width"])
    gate = torch.randn(size, dtype=torch.float32, device=device, generator=generator) * 2
    up = torch.randn(size, dtype=torch.float32, device=device, generator=generator)
    return gate.to(dtype), up.to(dtype)


def cost(config, shape, dtype):
    n = shape["tokens"] * shape["width"]
    return {"bytes": 3 * n * torch.empty((), dtype=dtype).element_size(), "flops": 5 * n}
