"""Mixture-of-experts routing, after the router's linear layer: for each token, a softmax over the
E experts' logits (in fp32), the top_k largest probabilities and their expert indices (largest
first), and, if norm_topk_prob, those k probabilities renormalised to sum to 1 (Mixtral always
renormalises; Qwen3-MoE says so in its config). router_logits [T, E] -> weights [T, K] fp32,
indices [T, K] int64. With weights_in_logits_dtype the weights are cast to the logits' dtype at
the end, as Qwen3-MoE's router does (Mixtral's keeps them in fp32)."""

import torch
from torch import nn


class MoERouter(nn.Module):
    def __init__(
        self, num_experts: int, top_k: int, norm_topk_prob: bool = True, weights_in_logits_dtype: bool = False
    ):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.weights_in_logits_dtype = weights_in_logits_dtype

    def forward(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.weights_in_logits_dtype:
            weights = weights.to(router_logits.dtype)
        return weights, indices


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "MoERouter"
# The first word names the HF router class; the task is its forward after F.linear.
FAMILIES = {
    "mixtral": "MixtralTopKRouter (softmax + top-k + renormalise, after its linear)",
    "qwen3_moe": "Qwen3MoeTopKRouter (softmax + top-k + optional renormalise, after its linear)",
}
BOUND = "memory"


def _num_experts(config):
    return getattr(config, "num_local_experts", None) or config.num_experts


def init_args(config):
    return {
        "num_experts": _num_experts(config),
        "top_k": config.num_experts_per_tok,
        "norm_topk_prob": bool(getattr(config, "norm_topk_prob", True)),
        "weights_in_logits_dtype": config.model_type == "qwen3_moe",
    }


def shapes(config, workload):
    dims = {"experts": _num_experts(config), "top_k": config.num_experts_per_tok}
    return {
        "prefill": {"tokens": workload.batch * workload.prefill_len, **dims},
        "decode": {"tokens": workload.batch, **dims},
    }


def make_inputs(config, shape, dtype, device, generator):
    t, e = shape["tokens"], shape["experts"]
    # Every row holds E distinct logits, a random permutation of standard-normal quantiles times a
    # random scale in [1, 3): a tie at the k-th place would make the expert order
    # implementation-defined, and random bf16 logits tie often (128 experts on a grid of 2**-6).
    quantiles = torch.special.ndtri((torch.arange(e, dtype=torch.float64, device=device) + 0.5) / e).float()
    order = torch.rand(t, e, device=device, generator=generator).argsort(dim=-1)
    scale = 1 + 2 * torch.rand(t, 1, device=device, generator=generator)
    return ((quantiles[order] * scale).to(dtype),)


def cost(config, shape, dtype):
    t, e, k = shape["tokens"], shape["experts"], shape["top_k"]
    size = torch.empty((), dtype=dtype).element_size()
    weight_size = size if config.model_type == "qwen3_moe" else 4
    # read the logits, write the weights and int64 indices; exp, sum, divide per logit + top-k
    return {"bytes": t * e * size + t * k * (weight_size + 8), "flops": t * e * 4 + t * k * 2}
