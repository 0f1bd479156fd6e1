"""MoE routing after the router's linear in ONE Triton launch: per token, softmax over the E
expert logits in fp32, the top_k probabilities (largest first, lowest index on a tie) found by
k rounds of row max + argmax in registers, optional renormalisation, and both outputs written as
[BLOCK_T, K] tiles. Eager runs softmax, topk, sum, div (and a cast) as 4-5 kernels with the
[T, E] probabilities round-tripping through memory; here logits are read once and only the
[T, K] results are written (Qwen3-30B-A3B prefill: 1 MiB of bf16 logits in, 384 KiB out).
"""

import functools

import os

import torch
import triton
import triton.language as tl
from torch import nn
from triton import knobs


def _cdiv(a: int, b: int) -> int:
    """triton.cdiv without its per-call overhead (a ConstexprFunction: ~3 us per host call on a CPU)."""
    return -(-a // b)


def _p2(n: int) -> int:
    """triton.next_power_of_2 without its per-call overhead (~1.5 us on a CPU: it sits on the decode path)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


@triton.jit
def _moe_router_kernel(
    logits_ptr,
    w_ptr,
    idx_ptr,
    n_tokens,
    n_experts,
    row_stride,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < n_tokens
    col_ok = cols < n_experts
    rows64 = rows.to(tl.int64)
    x = tl.load(
        logits_ptr + rows64[:, None] * row_stride + cols[None, :],
        mask=row_ok[:, None] & col_ok[None, :],
        other=float("-inf"),
    ).to(tl.float32)

    # softmax in fp32, as torch.softmax(..., dtype=float32): exp(x - max) / sum
    x_max = tl.max(x, axis=1)
    e = tl.exp(x - x_max[:, None])
    p = e / tl.sum(e, axis=1)[:, None]
    # Padding columns (and padding rows) must never win a round: probabilities are >= 0.
    p = tl.where(col_ok[None, :], p, -1.0)

    kcols = tl.arange(0, BLOCK_K)
    top_w = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    top_i = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    for k in tl.static_range(TOP_K):
        best = tl.max(p, axis=1)
        # lowest index among the maxima, the order torch.topk gives on CPU and GPU
        arg = tl.min(tl.where(p == best[:, None], cols[None, :], BLOCK_E), axis=1)
        top_w = tl.where(kcols[None, :] == k, best[:, None], top_w)
        top_i = tl.where(kcols[None, :] == k, arg[:, None], top_i)
        p = tl.where(cols[None, :] == arg[:, None], -1.0, p)

    if NORM:
        top_w = top_w / tl.sum(top_w, axis=1)[:, None]  # padding columns of top_w are 0
    out_mask = row_ok[:, None] & (kcols < TOP_K)[None, :]
    out_offs = rows64[:, None] * TOP_K + kcols[None, :]
    tl.store(w_ptr + out_offs, top_w.to(w_ptr.dtype.element_ty), mask=out_mask)
    tl.store(idx_ptr + out_offs, top_i.to(tl.int64), mask=out_mask)


@functools.lru_cache(maxsize=256)  # pure in its ints: decode calls skip the Python arithmetic
def moe_router_config(n_tokens: int, n_experts: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_E, num_warps): enough row blocks for every SM of an H100 (132) at 4096 tokens
    (32 rows per program -> 128 programs), tiles capped at 4096 logits (Qwen3's 128 experts x 32)."""
    block_e = _p2(n_experts)
    block_t = _p2(max(1, _cdiv(n_tokens, 132)))
    block_t = max(1, min(block_t, 4096 // block_e))
    num_warps = max(1, min(8, block_t * block_e // 1024))
    return block_t, block_e, num_warps


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---- launching: Triton's JIT once per argument signature, then the compiled kernel directly ----

# fastkernels: include ops

# fastkernels: include launch


def moe_route(
    router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool, weights_in_logits_dtype: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, K] fp32 or logits dtype, indices [T, K] int64)."""
    if torch.compiler.is_compiling():
        return _MOE_ROUTE(router_logits, top_k, bool(norm_topk_prob), bool(weights_in_logits_dtype))
    return _moe_route(router_logits, top_k, norm_topk_prob, weights_in_logits_dtype)


def _moe_route(
    router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool, weights_in_logits_dtype: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n_experts = router_logits.shape[-1]
    x = router_logits.reshape(-1, n_experts)
    if n_experts > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    n_tokens = x.shape[0]
    w_dtype = router_logits.dtype if weights_in_logits_dtype else torch.float32
    # allocated in the output's shape (rows of top_k, contiguous): an operator returns no views
    lead = router_logits.shape[:-1]
    weights = torch.empty((*lead, top_k), dtype=w_dtype, device=x.device)
    indices = torch.empty((*lead, top_k), dtype=torch.int64, device=x.device)
    if n_tokens and top_k:
        bt, be, nw = moe_router_config(n_tokens, n_experts)
        _launch(_moe_router_kernel, (_cdiv(n_tokens, bt),), (x, weights, indices, n_tokens, n_experts, x.stride(0)),
                {"TOP_K": top_k, "BLOCK_T": bt, "BLOCK_E": be, "BLOCK_K": _p2(top_k),
                 "NORM": bool(norm_topk_prob), "num_warps": nw})
    return weights, indices


_MOE_ROUTE = _register_op("moe_router", _moe_route)


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
        return moe_route(router_logits, self.top_k, self.norm_topk_prob, self.weights_in_logits_dtype)
