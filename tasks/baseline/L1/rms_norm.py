"""RMSNorm: y = weight * (x / sqrt(mean(x**2, -1) + eps)), reduced in fp32, cast back to x's dtype
before the weight multiply (exactly as the HF Llama/Mistral/Qwen modules do)."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * h.to(input_dtype)


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "RMSNorm"
FAMILIES = {
    "llama": "LlamaRMSNorm",
    "mistral": "MistralRMSNorm",
    "mixtral": "MixtralRMSNorm",
    "qwen2": "Qwen2RMSNorm",
    "qwen3": "Qwen3RMSNorm",
    "qwen3_moe": "Qwen3MoeRMSNorm",
}
BOUND = "memory"


def init_args(config):
    return {"hidden_size": config.hidden_size, "eps": config.rms_norm_eps}


def shapes(config, workload):
    out = {
        "prefill": {"tokens": workload.batch * workload.prefill_len},
        "decode": {"tokens": workload.batch},
    }
    if config.model_type in ("qwen3", "qwen3_moe"):  # per-head q/k norms over head_dim
        heads = config.num_attention_heads
        out["qk_norm_prefill"] = {
            "tokens": workload.batch * workload.prefill_len * heads,
            "init": {"hidden_size": config.head_dim},
        }
    return out


def make_inputs(config, shape, dtype, device, generator):
    hidden = shape.get("init", {}).get("hidden_size", config.hidden_size)
    x = torch.randn(shape["tokens"], hidden, dtype=torch.float32, device=device, generator=generator)
    return (x.to(dtype),)


def cost(config, shape, dtype):
    hidden = shape.get("init", {}).get("hidden_size", config.hidden_size)
    n = shape["tokens"] * hidden
    size = torch.empty((), dtype=dtype).element_size()
    return {"bytes": 2 * n * size + hidden * size, "flops": 4 * n}
