"""The sparse mixture-of-experts block of a MoE decoder layer (HF <Family>SparseMoeBlock):

    logits  = gate(x)                                    [T, E], T = B * S tokens
    probs   = softmax(logits in fp32)
    w, idx  = top-k of probs                             each token picks K of the E experts
    w       = w / sum(w)                                 if norm_topk_prob (Mixtral: always)
    out[t]  = sum over the K picks e of  w * expert_e(x[t])
    expert_e(x) = down_e(silu(gate_e(x)) * up_e(x))

x is [B, S, H]. The experts' weights are stored fused, as in transformers 5:
experts.gate_up_proj [E, 2I, H] (rows 0..I-1 the gate projection, rows I..2I-1 the up projection)
and experts.down_proj [E, H, I]. The routing weights stay fp32 up to the multiply with the expert
output (Mixtral), or are first rounded to the activations' dtype (Qwen3-MoE,
round_routing_weights=True); each weighted expert output is cast to the activations' dtype before
it is summed. Returns [B, S, H]."""

import torch
from torch import nn
from torch.nn import functional as F


class Experts(nn.Module):
    """The E experts' weights, fused into two 3-D tensors."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))


class MoEBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        round_routing_weights: bool = False,
    ):
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
        logits = self.gate(x)  # [T, E]
        probs = F.softmax(logits.float(), dim=-1)
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


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "MoEBlock"
FAMILIES = {
    "mixtral": "MixtralSparseMoeBlock",
    "qwen3_moe": "Qwen3MoeSparseMoeBlock",
}
# Prefill runs every expert over its share of many tokens (compute-bound); decode reads the
# router and the K picked experts' weights for a handful of tokens (memory-bound).
BOUND = "compute"


def _dims(config):
    """(num_experts, top_k, expert intermediate size) of the config."""
    if config.model_type == "mixtral":
        return config.num_local_experts, config.num_experts_per_tok, config.intermediate_size
    return config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size


def init_args(config):
    if config.hidden_act != "silu":
        raise ValueError(f"MoE baseline implements silu, the config asks for {config.hidden_act!r}")
    num_experts, top_k, inter = _dims(config)
    mixtral = config.model_type == "mixtral"
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": inter,
        "num_experts": num_experts,
        "top_k": top_k,
        "norm_topk_prob": True if mixtral else bool(config.norm_topk_prob),
        "round_routing_weights": not mixtral,
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
    num_experts, top_k, inter = _dims(config)
    tokens = shape["batch"] * shape["seq"]
    h = config.hidden_size
    size = torch.empty((), dtype=dtype).element_size()
    flops = 2 * tokens * h * num_experts + tokens * top_k * (6 * h * inter + 5 * inter + h)
    touched = min(num_experts, tokens * top_k)  # experts whose weights must be read at least once
    moved = (h * num_experts + touched * 3 * h * inter + 2 * tokens * h) * size
    return {"bytes": moved, "flops": flops}
