"""Fused residual add + RMSNorm, and self-attention. A piece shared by the library's level 2-4 kernel files.

The residual add fused with RMSNorm in one Triton pass per row, the RMSNorm module, and the
self-attention module (q/k/v/o GEMMs in torch around the rotary and attention piece).

It calls what the rnd, ops and rope_attention pieces define: a file that includes it includes
them first.

A library file splices it in where it has the line `# fastkernels: include norm_self_attention`, and is served
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
def _add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, sum_ptr, out_ptr, n_cols,
                         EPS: tl.constexpr,  # a constant: a runtime float is fp64 under Inductor
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    # one program per row: s = x + r (rounded to the stream's dtype, stored), out = RMSNorm(s);
    # without a residual, out = RMSNorm(x)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=m, other=0.0)
    dt = x.dtype
    s = x.to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * n_cols + offs, mask=m, other=0.0).to(tl.float32)
        s = _rnd(s + r, dt)
        tl.store(sum_ptr + row * n_cols + offs, s.to(sum_ptr.dtype.element_ty), mask=m)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / n_cols + EPS)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    # the normalised value is rounded to the input dtype before the weight multiply, as HF does
    y = _rnd(w * _rnd(s * rstd, dt), out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * n_cols + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def add_rms_norm(x: torch.Tensor, residual, weight: torch.Tensor, eps: float):
    """(x + residual, RMSNorm(x + residual)) over the last dim, the sum rounded to x's dtype; with
    residual None: (x, RMSNorm(x))."""
    if not torch.compiler.is_compiling():
        return _add_rms_norm_rows(x, residual, weight, eps)
    if residual is None:  # an operator returns no input: x goes back around it
        return x.contiguous(), _RMS_NORM_ROWS(x, weight, float(eps))
    return _ADD_RMS_NORM_ROWS(x, residual, weight, float(eps))


def _add_rms_norm_rows(x: torch.Tensor, residual, weight: torch.Tensor, eps: float):
    x = x.contiguous()
    n = x.shape[-1]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if residual is None:
        total, r, has = x, x, False
    else:
        r, has = residual.contiguous(), True
        total = torch.empty_like(x)
    rows = x.numel() // n if n else 0
    if rows:
        _run(_add_rms_norm_kernel, (rows,), (x, r, weight.contiguous(), total, out, n),
             {"EPS": float(eps), "HAS_RESIDUAL": has, "BLOCK": triton.next_power_of_2(n), "num_warps": 4 if n >= 2048 else 1})
    return total, out


def _rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _add_rms_norm_rows(x, None, weight, eps)[1]


def _add_rms_norm_pair(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_rms_norm_rows(x, residual, weight, eps)


_RMS_NORM_ROWS = _register_op("rms_norm", _rms_norm_rows)
_ADD_RMS_NORM_ROWS = _register_op("add_rms_norm", _add_rms_norm_pair)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_rms_norm(x, None, self.weight, self.variance_epsilon)[1]


class SelfAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.eps = eps
        self.scaling = head_dim**-0.5
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        self.qk_norm = qk_norm
        if qk_norm:  # Qwen3: applied inside the rotary kernel
            self.q_norm = RMSNorm(head_dim, eps)
            self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value, cache_position=None):
        b, s, _ = hidden_states.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = F.linear(hidden_states, self.q_proj.weight, self.q_proj.bias).view(b, s, hq, d)
        k = F.linear(hidden_states, self.k_proj.weight, self.k_proj.bias).view(b, s, hkv, d)
        v = F.linear(hidden_states, self.v_proj.weight, self.v_proj.bias).view(b, s, hkv, d)
        qw = self.q_norm.weight if self.qk_norm else None
        kw = self.k_norm.weight if self.qk_norm else None
        q = rope_rows(q, cos, sin, qw, self.eps).transpose(1, 2)  # [B, Hq, S, D]
        k = rope_rows(k, cos, sin, kw, self.eps).transpose(1, 2)  # [B, Hkv, S, D], baseline's layout
        v = v.transpose(1, 2)
        if cache_position is not None:  # the static-cache form: whole buffers, the valid rows masked in
            keys, values = torch.cat([past_key, k], dim=2), torch.cat([past_value, v], dim=2)
            allowed = static_mask(s, past_key.shape[2], cache_position)
            attn = attend(q, keys, values, self.scaling, sdpa=q.is_cuda, allowed=allowed)
        else:
            past = past_key.shape[2]
            keys = torch.cat([past_key, k], dim=2) if past else k
            values = torch.cat([past_value, v], dim=2) if past else v
            attn = attend(q, keys, values, self.scaling, sdpa=q.is_cuda)  # [B, Hq, S, D]
        attn = attn.transpose(1, 2).reshape(b, s, hq * d)
        return F.linear(attn, self.o_proj.weight, self.o_proj.bias), k, v
