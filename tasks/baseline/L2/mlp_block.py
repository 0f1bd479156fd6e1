"""The gated MLP of a dense decoder layer (HF <Family>MLP, SwiGLU):

    out = down_proj(silu(gate_proj(x)) * up_proj(x))

x is [B, S, H]; gate_proj and up_proj map H -> I, down_proj maps I -> H. Returns [B, S, H]."""

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "MLP"
FAMILIES = {
    "llama": "LlamaMLP",
    "mistral": "MistralMLP",
    "qwen2": "Qwen2MLP",
    "qwen3": "Qwen3MLP",
}
# Prefill is three matmuls over S tokens (compute-bound); decode streams the three weight
# matrices for a handful of tokens (memory-bound). Each shape names its ceiling.
BOUND = "compute"


def init_args(config):
    if config.hidden_act != "silu":
        raise ValueError(f"MLP baseline implements silu, the config asks for {config.hidden_act!r}")
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "bias": bool(getattr(config, "mlp_bias", False)),
    }


def shapes(config, workload):
    return {
        "prefill": {"batch": workload.batch, "seq": workload.prefill_len, "bound": "compute"},
        "decode": {"batch": workload.batch, "seq": 1, "bound": "memory"},
    }


def make_inputs(config, shape, dtype, device, generator):
    size = (shape["batch"], shape["seq"], config.hidden_size)
    return (torch.randn(size, dtype=torch.float32, device=device, generator=generator).to(dtype),)


def cost(config, shape, dtype):
    tokens = shape["batch"] * shape["seq"]
    h, i = config.hidden_size, config.intermediate_size
    size = torch.empty((), dtype=dtype).element_size()
    # three H x I matmuls; silu-and-mul is ~5 flops per intermediate element
    flops = 6 * tokens * h * i + 5 * tokens * i
    return {"bytes": (3 * h * i + 2 * tokens * h) * size, "flops": flops}
