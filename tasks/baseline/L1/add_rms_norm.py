"""Residual add fused with RMSNorm: residual_out = x + residual; normed = RMSNorm(residual_out).
The decoder layer's "hidden_states = residual + hidden_states" followed by the next RMSNorm
(post_attention_layernorm, or the next layer's input_layernorm). The sum is kept in x's dtype
(it is the residual stream the layer carries on); the norm reduces in fp32 and casts back to x's
dtype before the weight multiply, exactly as the HF modules do."""

import torch
from torch import nn


class AddRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual_out = residual + x
        input_dtype = residual_out.dtype
        h = residual_out.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.variance_epsilon)
        normed = self.weight * h.to(input_dtype)
        return normed, residual_out


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "AddRMSNorm"
# The first word names the HF class the norm half is (it lives in modeling_<family>).
FAMILIES = {
    "llama": "LlamaRMSNorm (after residual + hidden_states in LlamaDecoderLayer)",
    "mistral": "MistralRMSNorm (after residual + hidden_states in MistralDecoderLayer)",
    "mixtral": "MixtralRMSNorm (after residual + hidden_states in MixtralDecoderLayer)",
    "qwen2": "Qwen2RMSNorm (after residual + hidden_states in Qwen2DecoderLayer)",
    "qwen3": "Qwen3RMSNorm (after residual + hidden_states in Qwen3DecoderLayer)",
    "qwen3_moe": "Qwen3MoeRMSNorm (after residual + hidden_states in Qwen3MoeDecoderLayer)",
}
BOUND = "memory"


def init_args(config):
    return {"hidden_size": config.hidden_size, "eps": config.rms_norm_eps}


def shapes(config, workload):
    return {
        "prefill": {"tokens": workload.batch * workload.prefill_len},
        "decode": {"tokens": workload.batch},
    }


def make_inputs(config, shape, dtype, device, generator):
    size = (shape["tokens"], config.hidden_size)
    # x: a sublayer's output; residual: the residual stream, which grows larger over the layers.
    x = torch.randn(size, dtype=torch.float32, device=device, generator=generator)
    residual = torch.randn(size, dtype=torch.float32, device=device, generator=generator) * 4
    return x.to(dtype), residual.to(dtype)


def cost(config, shape, dtype):
    n = shape["tokens"] * config.hidden_size
    size = torch.empty((), dtype=dtype).element_size()
    # read x and residual, write normed and residual_out, read the weight once
    return {"bytes": 4 * n * size + config.hidden_size * size, "flops": 5 * n}
