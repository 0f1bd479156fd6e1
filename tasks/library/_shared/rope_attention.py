"""Rotary embedding and attention. A piece shared by the library's level 2-4 kernel files.

Rotary embedding with Qwen3's optional per-head q/k RMSNorm in one Triton pass per q and k,
the causal mask, and attention itself (SDPA on CUDA, eager's rounding points elsewhere).

It calls what the rnd and ops pieces define: a file that includes it includes
them first.

A library file splices it in where it has the line `# fastkernels: include rope_attention`, and is served
whole, as one self-contained module (fastkernels.registry.tasks.kernel_source). This file is the
one copy to edit; what follows its `# fastkernels: piece` line is the piece.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F

# fastkernels: piece
from typing import Optional


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, w_ptr, out_ptr,
    n_heads, seq,
    x_sb, x_ss, x_sh,        # input strides: batch, position, head (the last dim is unit stride)
    c_sb, c_ss,              # cos/sin strides: batch, position
    o_sb, o_ss, o_sh,        # output strides
    EPS: tl.constexpr,       # a constant: a runtime float is fp64 under Inductor
    HALF: tl.constexpr, BLOCK: tl.constexpr, NORM: tl.constexpr,
):
    # one program per (batch, position, head) row of D = 2 * HALF elements
    row = tl.program_id(0)
    h = row % n_heads
    s = (row // n_heads) % seq
    b = row // (n_heads * seq)
    offs = tl.arange(0, BLOCK)
    m = offs < HALF
    xb = x_ptr + b.to(tl.int64) * x_sb + s.to(tl.int64) * x_ss + h.to(tl.int64) * x_sh
    x1 = tl.load(xb + offs, mask=m, other=0.0)
    x2 = tl.load(xb + HALF + offs, mask=m, other=0.0)
    dt = x1.dtype
    a1 = x1.to(tl.float32)
    a2 = x2.to(tl.float32)
    if NORM:
        var = (tl.sum(a1 * a1, axis=0) + tl.sum(a2 * a2, axis=0)) / (2 * HALF)
        rstd = 1.0 / tl.sqrt(var + EPS)
        w1 = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + offs, mask=m, other=0.0).to(tl.float32)
        # normalised value rounded to the input dtype, then the weight product rounded again
        a1 = _rnd(w1 * _rnd(a1 * rstd, dt), dt)
        a2 = _rnd(w2 * _rnd(a2 * rstd, dt), dt)
    cb = b.to(tl.int64) * c_sb + s.to(tl.int64) * c_ss
    c1 = tl.load(cos_ptr + cb + offs, mask=m, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + cb + HALF + offs, mask=m, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + cb + offs, mask=m, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + cb + HALF + offs, mask=m, other=0.0).to(tl.float32)
    # rotate_half(x) = cat(-x2, x1); each product rounds to the input dtype, then the sum
    y1 = _rnd(_rnd(a1 * c1, dt) + _rnd(-a2 * s1, dt), dt)
    y2 = _rnd(_rnd(a2 * c2, dt) + _rnd(a1 * s2, dt), dt)
    ob = out_ptr + b.to(tl.int64) * o_sb + s.to(tl.int64) * o_ss + h.to(tl.int64) * o_sh
    tl.store(ob + offs, y1.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(ob + HALF + offs, y2.to(out_ptr.dtype.element_ty), mask=m)


def rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, weight, eps: float) -> torch.Tensor:
    """x [B, S, heads, D] (last dim unit stride) -> rope(norm(x)) as a new [B, S, heads, D] tensor;
    weight None: no norm. cos, sin [B or 1, S, D]."""
    if torch.compiler.is_compiling():
        return _ROPE_ROWS(x, cos, sin, weight, float(eps))
    return _rope_rows(x, cos, sin, weight, eps)


def _rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, weight: Optional[torch.Tensor],
               eps: float) -> torch.Tensor:
    b, s, nh, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    if cos.shape[0] != b:  # HF's rotary gives [1, S, D] for a batch sharing its positions: read it per sequence
        cos, sin = cos.expand(b, s, d), sin.expand(b, s, d)
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty((b, s, nh, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    half = d // 2
    norm = weight is not None
    w = weight.contiguous() if norm else x  # unused when NORM is off
    _run(_rope_kernel, (b * s * nh,), (
        x, cos, sin, w, out, nh, s,
        x.stride(0), x.stride(1), x.stride(2),
        cos.stride(0), cos.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
    ), {"EPS": float(eps), "HALF": half, "BLOCK": triton.next_power_of_2(half), "NORM": norm, "num_warps": 1 if d <= 128 else 2})
    return out


_ROPE_ROWS = _register_op("rope_rows", _rope_rows)


def causal_mask(s: int, past: int, device) -> torch.Tensor:
    """[S, P+S] boolean, True where new token i may see key j: j <= P + i (bottom-right aligned)."""
    query_pos = torch.arange(past, past + s, device=device)[:, None]
    return torch.arange(past + s, device=device)[None, :] <= query_pos


def static_mask(s: int, length: int, cache_position: torch.Tensor) -> torch.Tensor:
    """[S, L+S] boolean of the static-cache form: the L buffer rows before cache_position[0] (the
    valid ones), then the S new keys causally. Built on the device: no host read of the position."""
    key_pos = torch.arange(length + s, device=cache_position.device)[None, :]
    new = (key_pos >= length) & (key_pos <= torch.arange(length, length + s, device=cache_position.device)[:, None])
    return (key_pos < cache_position[:1, None]) | new


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float, sdpa: bool,
           allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Causal (bottom-right) grouped-query attention of q [B, Hq, S, D] over keys/values
    [B, Hkv, P+S, D] -> [B, Hq, S, D]; `allowed` ([S, P+S] boolean) replaces the causal mask (the
    static-cache form, static_mask).

    sdpa=True (CUDA): F.scaled_dot_product_attention (fused flash / memory-efficient kernels). Its
    is_causal mask is aligned top-left; with no past (P = 0) that is the same mask, one new token
    (decode) sees every key and needs none, anything else gets the explicit boolean mask.
    sdpa=False (CPU): the eager computation with eager's rounding points (scores rounded to the
    activations' dtype, softmax in fp32, probabilities rounded back), so a CPU run reproduces the
    reference model's tokens; SDPA's fused kernels keep the scores in fp32, which is more accurate
    but can flip a near-tied greedy token of a tiny random-weight model."""
    s, length = q.shape[2], keys.shape[2]
    past = length - s
    hq, hkv = q.shape[1], keys.shape[1]
    if sdpa:
        if allowed is not None:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=scaling,
                                                  enable_gqa=hq != hkv)
        if past == 0 and s > 1:
            mask, causal = None, True
        elif s == 1:
            mask, causal = None, False
        else:
            mask, causal = causal_mask(s, past, q.device), False
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal, scale=scaling,
                                              enable_gqa=hq != hkv)
    b, d = q.shape[0], q.shape[3]
    # group the query heads by their kv head: [B, Hkv, rep*S, D] against [B, Hkv, P+S, D], no copy of the cache
    qg = q.reshape(b, hkv, (hq // hkv) * s, d)
    scores = torch.matmul(qg, keys.transpose(2, 3)).view(b, hq, s, length) * scaling
    seen = causal_mask(s, past, q.device) if allowed is None else allowed
    scores = scores.masked_fill(~seen, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs.view(b, hkv, (hq // hkv) * s, length), values).view(b, hq, s, d)
