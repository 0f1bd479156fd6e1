"""One decoder layer of a dense model (HF <Family>DecoderLayer) over a KV cache, with the
memory-bound parts in Triton kernels and the GEMMs in torch:

    x      = RMSNorm(hidden)                          Triton, one pass per row
    a, k, v = self_attn(x)                            q/k/v GEMMs; ONE Triton pass per q and k for
                                                      Qwen3's per-head RMSNorm + rotary; attention
    h, x   = hidden + a, RMSNorm(hidden + a)          Triton: the residual add fused with the norm
    out    = h + down(silu(gate(x)) * up(x))          GEMMs; silu-and-mul in one Triton pass

Rounding as the baseline: every residual sum rounds to the activations' dtype; RMSNorm casts the
normalised value to that dtype before the weight multiply; silu rounds before its multiply; rotary
rounds each product and their sum. bf16 rounding is done on the bits (round to nearest even), so
the Triton interpreter, whose casts truncate, rounds as the GPU does.

Attention: on CUDA F.scaled_dot_product_attention (bottom-right causal mask: none for one new
token, is_causal with no past, an explicit mask otherwise); elsewhere the eager computation with
eager's rounding points, so a CPU run reproduces the reference model's greedy tokens.
"""

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F


@triton.jit
def _rnd(x, dt: tl.constexpr):
    """fp32 x rounded to dtype dt (round to nearest even), returned as fp32. For bf16 the rounding
    is done on the bits, so the Triton interpreter (whose casts truncate) rounds as the GPU does."""
    if dt == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dt).to(tl.float32)


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, w_ptr, out_ptr,
    n_heads, seq, eps,
    x_sb, x_ss, x_sh,        # input strides: batch, position, head (the last dim is unit stride)
    c_sb, c_ss,              # cos/sin strides: batch, position
    o_sb, o_ss, o_sh,        # output strides
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
        rstd = 1.0 / tl.sqrt(var + eps)
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
    weight None: no norm. cos, sin [B, S, D]."""
    b, s, nh, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty((b, s, nh, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    half = d // 2
    norm = weight is not None
    w = weight.contiguous() if norm else x  # unused when NORM is off
    _rope_kernel[(b * s * nh,)](
        x, cos, sin, w, out, nh, s, float(eps),
        x.stride(0), x.stride(1), x.stride(2),
        cos.stride(0), cos.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        HALF=half, BLOCK=triton.next_power_of_2(half), NORM=norm,
        num_warps=1 if d <= 128 else 2,
    )
    return out


def causal_mask(s: int, past: int, device) -> torch.Tensor:
    """[S, P+S] boolean, True where new token i may see key j: j <= P + i (bottom-right aligned)."""
    query_pos = torch.arange(past, past + s, device=device)[:, None]
    return torch.arange(past + s, device=device)[None, :] <= query_pos


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float, sdpa: bool) -> torch.Tensor:
    """Causal (bottom-right) grouped-query attention of q [B, Hq, S, D] over keys/values
    [B, Hkv, P+S, D] -> [B, Hq, S, D].

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
    scores = scores.masked_fill(~causal_mask(s, past, q.device), torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs.view(b, hkv, (hq // hkv) * s, length), values).view(b, hq, s, d)


@triton.jit
def _add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, sum_ptr, out_ptr, n_cols, eps,
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
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    # the normalised value is rounded to the input dtype before the weight multiply, as HF does
    y = _rnd(w * _rnd(s * rstd, dt), out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * n_cols + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def add_rms_norm(x: torch.Tensor, residual, weight: torch.Tensor, eps: float):
    """(x + residual, RMSNorm(x + residual)) over the last dim, the sum rounded to x's dtype; with
    residual None: (x, RMSNorm(x))."""
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
        _add_rms_norm_kernel[(rows,)](x, r, weight.contiguous(), total, out, n, float(eps), HAS_RESIDUAL=has,
                                      BLOCK=triton.next_power_of_2(n), num_warps=4 if n >= 2048 else 1)
    return total, out


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

    def forward(self, hidden_states, cos, sin, past_key, past_value):
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
        past = past_key.shape[2]
        keys = torch.cat([past_key, k], dim=2) if past else k
        values = torch.cat([past_value, v], dim=2) if past else v
        attn = attend(q, keys, values, self.scaling, sdpa=q.is_cuda)  # [B, Hq, S, D]
        attn = attn.transpose(1, 2).reshape(b, s, hq * d)
        return F.linear(attn, self.o_proj.weight, self.o_proj.bias), k, v


@triton.jit
def _silu_and_mul_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    g = tl.load(gate_ptr + offs, mask=m, other=0.0)
    u = tl.load(up_ptr + offs, mask=m, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    s = _rnd(gf / (1.0 + tl.exp(-gf)), g.dtype)
    tl.store(out_ptr + offs, _rnd(s * u, out_ptr.dtype.element_ty).to(out_ptr.dtype.element_ty), mask=m)


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, elementwise, for same-shape tensors; returns a new contiguous tensor."""
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        block = 1024
        _silu_and_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=4)
    return out


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.linear(x, self.gate_proj.weight, self.gate_proj.bias)
        up = F.linear(x, self.up_proj.weight, self.up_proj.bias)
        return F.linear(silu_and_mul(gate, up), self.down_proj.weight, self.down_proj.bias)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float,
        qkv_bias: bool,
        qk_norm: bool,
        o_bias: bool = False,
        mlp_bias: bool = False,
    ):
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias)
        self.mlp = MLP(hidden_size, intermediate_size, mlp_bias)
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value):
        ln1, ln2 = self.input_layernorm, self.post_attention_layernorm
        _, x = add_rms_norm(hidden_states, None, ln1.weight, ln1.variance_epsilon)
        a, key, value = self.self_attn(x, cos, sin, past_key, past_value)
        h, x = add_rms_norm(a, hidden_states, ln2.weight, ln2.variance_epsilon)  # residual add + norm, one pass
        return h + self.mlp(x), key, value
