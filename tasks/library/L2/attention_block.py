"""The self-attention block (HF <Family>Attention) over a KV cache, with its memory-bound parts in
one Triton pass per projection:

    q, k, v = q_proj(x), k_proj(x), v_proj(x)           torch GEMMs (F.linear; biases for Qwen2)
    q, k    = rope(qk_norm(q)), rope(qk_norm(k))        ONE Triton kernel per tensor: the per-head
                                                        RMSNorm (Qwen3) and the rotary embedding,
                                                        read once, written once, in cache layout
    K, V    = cat(past, new)
    out     = o_proj(SDPA(q, K, V, causal bottom-right, GQA))

The rotary kernel reads a head's row as its two halves (rotate_half pairs element i with i + D/2),
so the norm's sum of squares and the rotation need no shuffles. Rounding as the baseline: the norm
casts the normalised value to the input dtype before the weight multiply (and the product rounds
again); q*cos and rotate_half(q)*sin round to the input dtype, then their sum does.

Attention: F.scaled_dot_product_attention. Its is_causal mask is aligned top-left, the baseline's
bottom-right (new token i sees keys 0..P+i): with no past (P = 0) both agree; with one new token
(decode) it sees every key, so no mask at all; otherwise an explicit boolean mask is built.
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


class RMSNorm(nn.Module):
    """Qwen3's per-head q/k norm weight (applied inside the rotary kernel)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps


class AttentionBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float,
        qkv_bias: bool,
        qk_norm: bool,
        o_bias: bool = False,
    ):
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
        if qk_norm:
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
