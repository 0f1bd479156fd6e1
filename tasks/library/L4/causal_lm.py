"""The whole causal language model forward (HF <Family>ForCausalLM) over a KV cache, with the
memory-bound parts in Triton kernels and the GEMMs in torch:

    h       = embed_tokens(input_ids)                 gather
    cos, sin of positions P..P+S-1                    rotary angles (with Llama 3's scaling)
    x       = RMSNorm_0(h)                            Triton
    per layer:
        a, k, v = self_attn(x)                        q/k/v GEMMs; ONE Triton pass per q and k for
                                                      Qwen3's per-head RMSNorm + rotary; attention
        h, x    = h + a, RMSNorm(h + a)               Triton: residual add fused with the norm
        m       = mlp(x)                              GEMMs + Triton silu-and-mul, or the MoE block
                                                      (Triton router, per-expert GEMMs, Triton
                                                      silu-and-mul and weighted combine)
        h, x    = h + m, next RMSNorm(h + m)          Triton: residual add fused with the next
                                                      layer's input norm (the final norm after the
                                                      last layer)
    logits  = lm_head(x)                              GEMM

Rounding as the baseline: every residual sum rounds to the activations' dtype; RMSNorm casts the
normalised value to that dtype before the weight multiply; silu rounds before its multiply; rotary
rounds each product and their sum; routing weights and the expert sum round as the baseline's
expert loop does. bf16 rounding is done on the bits (round to nearest even), so the Triton
interpreter, whose casts truncate, rounds as the GPU does.

Attention: on CUDA F.scaled_dot_product_attention (bottom-right causal mask: none for one new
token, is_causal with no past, an explicit mask otherwise); elsewhere the eager computation with
eager's rounding points, so a CPU run reproduces the reference model's greedy tokens.
Returns (logits [B, S, V], keys, values): layer i's new cache entries for these S tokens.
"""

import math

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
        t, e = logits.shape
        k = self.top_k
        weights = torch.empty((t, k), dtype=torch.float32, device=logits.device)
        idx = torch.empty((t, k), dtype=torch.int64, device=logits.device)
        if t:
            logits = logits if logits.stride(-1) == 1 else logits.contiguous()
            _route_kernel[(t,)](logits, weights, idx, e, logits.stride(0), TOP_K=k,
                                BLOCK_E=triton.next_power_of_2(e), BLOCK_K=triton.next_power_of_2(k),
                                NORM=bool(self.norm_topk_prob), num_warps=1)
        return weights, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        t, k = b * s, self.top_k
        x = x.reshape(t, h)
        out = torch.empty((t, h), dtype=x.dtype, device=x.device)
        if t == 0:
            return out.reshape(b, s, h)
        weights, idx = self.route(F.linear(x, self.gate.weight))  # [T, K] fp32, int64
        if self.round_routing_weights:
            weights = weights.to(x.dtype)

        # (pick, token) pairs, pick-major as the baseline visits them, grouped by expert (stable)
        flat = idx.t().reshape(-1)  # entry j = pick * T + token
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()  # the one host sync
        tokens = order % t
        inter = self.experts.down_proj.shape[-1]
        y = torch.empty((t * k, h), dtype=x.dtype, device=x.device)  # expert outputs, grouped rows
        xs = x[tokens]
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            gu = F.linear(xs[start:start + n], self.experts.gate_up_proj[e])  # [n, 2I]
            act = torch.empty((n, inter), dtype=x.dtype, device=x.device)
            block = min(1024, triton.next_power_of_2(inter))
            _expert_silu_and_mul_kernel[(n, triton.cdiv(inter, block))](gu, act, inter, gu.stride(0), BLOCK=block,
                                                                 num_warps=4)
            torch.matmul(act, self.experts.down_proj[e].t(), out=y[start:start + n])
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
        return out.reshape(b, s, h)


class DecoderLayer(nn.Module):
    def __init__(self, attention: nn.Module, mlp: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden_states, cos, sin, past_key, past_value):
        ln1, ln2 = self.input_layernorm, self.post_attention_layernorm
        _, x = add_rms_norm(hidden_states, None, ln1.weight, ln1.variance_epsilon)
        a, key, value = self.self_attn(x, cos, sin, past_key, past_value)
        h, x = add_rms_norm(a, hidden_states, ln2.weight, ln2.variance_epsilon)
        return h + self.mlp(x), key, value


def rope_inv_freq(rope: dict, head_dim: int, device) -> torch.Tensor:
    """The rotary inverse frequencies [D/2] in fp32, as HF computes them ("default", and Llama 3's
    "llama3": long wavelengths divided by `factor`, short ones kept, the band between interpolated)."""
    base = rope["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    if rope["rope_type"] == "default":
        return inv_freq
    if rope["rope_type"] != "llama3":
        raise ValueError(f"rope type {rope['rope_type']!r} is not implemented")
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, eps: float, layers: list):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(hidden_size, eps)


class CausalLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        intermediate_size: int,
        eps: float,
        qkv_bias: bool,
        qk_norm: bool,
        rope: dict,
        tie_word_embeddings: bool = False,
        o_bias: bool = False,
        mlp_bias: bool = False,
        moe: dict | None = None,
    ):
        super().__init__()
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.rope = dict(rope)
        dense_layers = set(moe.get("dense_layers", [])) if moe else set(range(num_layers))
        layers = []
        for i in range(num_layers):
            attention = SelfAttention(hidden_size, num_heads, num_kv_heads, head_dim, eps, qkv_bias, qk_norm, o_bias)
            if i in dense_layers:
                mlp = MLP(hidden_size, intermediate_size, mlp_bias)
            else:
                mlp = MoEBlock(hidden_size, moe["intermediate_size"], moe["num_experts"], moe["top_k"],
                               moe["norm_topk_prob"], moe.get("round_routing_weights", False))
            layers.append(DecoderLayer(attention, mlp, hidden_size, eps))
        self.model = Decoder(vocab_size, hidden_size, eps, layers)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rotary(self, past: int, seq: int, dtype, device):
        """cos, sin [1, S, D] of positions past..past+seq-1, computed in fp32 and cast to `dtype`
        (inv_freq is computed here, in fp32, not kept as a buffer that .to(bfloat16) would round)."""
        inv_freq = rope_inv_freq(self.rope, self.head_dim, device)
        positions = torch.arange(past, past + seq, device=device)[None, :]
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids, past_keys=None, past_values=None):
        b, s = input_ids.shape
        h = F.embedding(input_ids, self.model.embed_tokens.weight)
        layers = list(self.model.layers)
        if past_keys is None:
            empty = h.new_empty(b, self.num_kv_heads, 0, self.head_dim)
            past_keys = past_values = [empty] * len(layers)
        past = past_keys[0].shape[2] if len(past_keys) else 0
        cos, sin = self.rotary(past, s, h.dtype, h.device)
        cos, sin = cos.expand(b, s, self.head_dim), sin.expand(b, s, self.head_dim)
        norms = [layer.input_layernorm for layer in layers[1:]] + [self.model.norm]
        first = layers[0].input_layernorm if layers else self.model.norm
        _, x = add_rms_norm(h, None, first.weight, first.variance_epsilon)
        keys, values = [], []
        for layer, nxt, past_key, past_value in zip(layers, norms, past_keys, past_values):
            a, key, value = layer.self_attn(x, cos, sin, past_key, past_value)
            ln2 = layer.post_attention_layernorm
            h, x = add_rms_norm(a, h, ln2.weight, ln2.variance_epsilon)  # h + attention, its norm
            h, x = add_rms_norm(layer.mlp(x), h, nxt.weight, nxt.variance_epsilon)  # h + mlp, the next norm
            keys.append(key)
            values.append(value)
        return F.linear(x, self.lm_head.weight), keys, values
