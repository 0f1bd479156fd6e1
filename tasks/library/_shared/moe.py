"""The MoE block. A piece shared by the library's level 2-4 kernel files.

Triton top-k routing, the experts' silu-and-mul and the weighted combine; the experts' GEMMs
in torch.

It calls what the rnd and ops pieces define: a file that includes it includes
them first. The routing is an operator torch.compile sees into; the experts' part is an opaque
one (`moe_experts`: its group sizes come to the host, which no graph can trace and no CUDA graph
can capture), so a model with this block compiles with fullgraph=True but is not CUDA-graphed.

A library file splices it in where it has the line `# fastkernels: include moe`, and is served
whole, as one self-contained module (fastkernels.registry.tasks.kernel_source). This file is the
one copy to edit; what follows its `# fastkernels: piece` line is the piece.
"""

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F

# fastkernels: piece
@triton.jit
def _route_kernel(logits_ptr, w_ptr, idx_ptr, n_experts, stride, TOP_K: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    m = offs < n_experts
    x = tl.load(logits_ptr + t * stride + offs, mask=m, other=float("-inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    p = e / tl.sum(e, axis=0)
    p = tl.where(m, p, -1.0)
    koffs = tl.arange(0, BLOCK_K)
    wv = tl.zeros([BLOCK_K], dtype=tl.float32)
    iv = tl.zeros([BLOCK_K], dtype=tl.int64)
    for k in tl.static_range(TOP_K):
        best = tl.max(p, axis=0)
        at = tl.min(tl.where(p == best, offs, BLOCK_E), axis=0)  # the lowest index of the maximum
        wv = tl.where(koffs == k, best, wv)
        iv = tl.where(koffs == k, at.to(tl.int64), iv)
        p = tl.where(offs == at, -1.0, p)
    if NORM:
        wv = wv / tl.sum(wv, axis=0)
    km = koffs < TOP_K
    tl.store(w_ptr + t * TOP_K + koffs, wv, mask=km)
    tl.store(idx_ptr + t * TOP_K + koffs, iv, mask=km)


@triton.jit
def _expert_silu_and_mul_kernel(gu_ptr, out_ptr, n_cols, gu_stride, BLOCK: tl.constexpr):
    # gu is [rows, 2I]: columns 0..I-1 the gate projection, I..2I-1 the up projection
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_cols
    g = tl.load(gu_ptr + row * gu_stride + offs, mask=m, other=0.0)
    u = tl.load(gu_ptr + row * gu_stride + n_cols + offs, mask=m, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    s = _rnd(gf / (1.0 + tl.exp(-gf)), g.dtype)  # silu rounded as eager rounds it
    tl.store(out_ptr + row * n_cols + offs, _rnd(s * u, out_ptr.dtype.element_ty).to(out_ptr.dtype.element_ty),
             mask=m)


@triton.jit
def _combine_kernel(y_ptr, rows_ptr, w_ptr, out_ptr, hidden, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    # out[t] = sum over k of round(w[t, k] * y[rows[t, k]]), added in the given order (ascending
    # expert), each partial sum rounded to the output dtype
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < hidden
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        r = tl.load(rows_ptr + t * TOP_K + k)
        w = tl.load(w_ptr + t * TOP_K + k).to(tl.float32)
        y = tl.load(y_ptr + r * hidden + offs, mask=m, other=0.0).to(tl.float32)
        c = _rnd(y * w, out_ptr.dtype.element_ty)
        acc = _rnd(acc + c, out_ptr.dtype.element_ty)
    tl.store(out_ptr + t * hidden + offs, acc.to(out_ptr.dtype.element_ty), mask=m)


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

    def route(self, logits: torch.Tensor):
        if torch.compiler.is_compiling():
            return _MOE_ROUTE(logits, self.top_k, bool(self.norm_topk_prob))
        return _moe_route(logits, self.top_k, bool(self.norm_topk_prob))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        t = b * s
        x = x.reshape(t, h)
        if t == 0:
            return torch.empty((b, s, h), dtype=x.dtype, device=x.device)
        weights, idx = self.route(F.linear(x, self.gate.weight))  # [T, K] fp32, int64
        if self.round_routing_weights:
            weights = weights.to(x.dtype)
        experts = _MOE_EXPERTS if torch.compiler.is_compiling() else _moe_experts
        return experts(x, weights, idx, self.experts.gate_up_proj, self.experts.down_proj).reshape(b, s, h)


def _moe_route(logits: torch.Tensor, top_k: int, norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    t, e = logits.shape
    k = top_k
    weights = torch.empty((t, k), dtype=torch.float32, device=logits.device)
    idx = torch.empty((t, k), dtype=torch.int64, device=logits.device)
    if t:
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        _run(_route_kernel, (t,), (logits, weights, idx, e, logits.stride(0)),
             {"TOP_K": k, "BLOCK_E": triton.next_power_of_2(e), "BLOCK_K": triton.next_power_of_2(k), "NORM": norm,
              "num_warps": 1})
    return weights, idx


def _moe_experts(x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, gate_up_proj: torch.Tensor,
                 down_proj: torch.Tensor) -> torch.Tensor:
    """sum over each token's picks of weight * down_e(silu(gate_e(x)) * up_e(x)), x [T, H] -> [T, H]."""
    t, h = x.shape
    k = idx.shape[1]
    out = torch.empty((t, h), dtype=x.dtype, device=x.device)
    # (pick, token) pairs, pick-major as the baseline visits them, grouped by expert (stable)
    flat = idx.t().reshape(-1)  # entry j = pick * T + token
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=gate_up_proj.shape[0]).tolist()  # the one host sync
    tokens = order % t
    inter = down_proj.shape[-1]
    y = torch.empty((t * k, h), dtype=x.dtype, device=x.device)  # expert outputs, grouped rows
    xs = x[tokens]
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        gu = F.linear(xs[start:start + n], gate_up_proj[e])  # [n, 2I]
        act = torch.empty((n, inter), dtype=x.dtype, device=x.device)
        block = min(1024, triton.next_power_of_2(inter))
        _expert_silu_and_mul_kernel[(n, triton.cdiv(inter, block))](gu, act, inter, gu.stride(0), BLOCK=block,
                                                                     num_warps=4)
        torch.matmul(act, down_proj[e].t(), out=y[start:start + n])
        start += n

    # where each (token, pick)'s output row landed, the picks of a token in ascending expert order
    row_of = torch.empty_like(order)
    row_of[order] = torch.arange(t * k, device=x.device)
    rows = row_of.view(k, t).t()  # [T, K]
    _, by_expert = idx.sort(dim=1)
    rows = rows.gather(1, by_expert).contiguous()
    w = weights.gather(1, by_expert).contiguous()
    block = min(1024, triton.next_power_of_2(h))
    _combine_kernel[(t, triton.cdiv(h, block))](y, rows, w, out, h, TOP_K=k, BLOCK=block, num_warps=4)
    return out


def _moe_experts_shape(x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, gate_up_proj: torch.Tensor,
                       down_proj: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_MOE_ROUTE = _register_op("moe_route", _moe_route)
_MOE_EXPERTS = _register_op("moe_experts", _moe_experts, fake=_moe_experts_shape)
