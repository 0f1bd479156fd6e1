"""Rotary position embedding of q and k in ONE Triton launch: each program takes a block of
BLOCK_S tokens of one sequence, loads their cos/sin once into registers, and walks a group of
heads (query heads and key heads in the same grid), rotating each head's two halves in place in
registers: out1 = x1*c1 - x2*s1, out2 = x2*c2 + x1*s2 (rotate_half without building it).

Bytes: read and write q and k once, cos/sin once per head group from L2. At Llama-3.1-8B prefill
(4096 tokens, 32 + 8 heads of 128, bf16) that is 82 MiB, ~28 us at ~3 TB/s; eager HF runs ~10
kernels (two cats, negations, four multiplies, two adds) over the same tensors.

Works on any strides with a unit-stride head dim, so HF's q_proj(x).view(B,S,H,D).transpose(1,2)
views are read in place; outputs keep the input's layout (empty_like), as the eager ops do.
Rounding as eager: q*cos, rotate_half(q)*sin and their sum are each rounded to the input dtype.
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


@triton.jit
def _rope_heads(
    x_ptr, o_ptr, b, h0, n_heads,
    x_sb, x_sh, x_ss, o_sb, o_sh, o_ss,
    s_offs, d_offs, mask, half,
    c1, c2, s1, s2,
    HEADS: tl.constexpr,
):
    # Rotate heads h0 .. h0+HEADS-1 (those < n_heads) of one [BLOCK_S, HALF] token block, with
    # cos/sin already in registers. The loop is unrolled, so all 2*HEADS loads are in flight at once.
    x_base = x_ptr + b * x_sb + s_offs[:, None] * x_ss + d_offs[None, :]
    o_base = o_ptr + b * o_sb + s_offs[:, None] * o_ss + d_offs[None, :]
    for i in tl.static_range(HEADS):
        h = h0 + i
        m = mask & (h < n_heads)
        hx = h.to(tl.int64)
        x1 = tl.load(x_base + hx * x_sh, mask=m, other=0.0)
        x2 = tl.load(x_base + hx * x_sh + half, mask=m, other=0.0)
        dt = o_ptr.dtype.element_ty  # eager rounds each op to the promoted (output) dtype
        x1f = x1.to(tl.float32)
        x2f = x2.to(tl.float32)
        # Each product rounds to the input dtype before the add, like the eager `q*cos + rot*sin`.
        out1 = (x1f * c1).to(dt).to(tl.float32) + (-x2f * s1).to(dt).to(tl.float32)
        out2 = (x2f * c2).to(dt).to(tl.float32) + (x1f * s2).to(dt).to(tl.float32)
        tl.store(o_base + hx * o_sh, out1.to(o_ptr.dtype.element_ty), mask=m)
        tl.store(o_base + hx * o_sh + half, out2.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr,
    seq_len, half, n_q_heads, n_k_heads,
    q_sb, q_sh, q_ss, k_sb, k_sh, k_ss,
    qo_sb, qo_sh, qo_ss, ko_sb, ko_sh, ko_ss,
    c_sb, c_ss, sn_sb, sn_ss,
    seq_bucket,  # autotune key only: the power-of-two bucket of batch * seq
    BLOCK_S: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    HEADS: tl.constexpr,
):
    n_q_groups = tl.cdiv(n_q_heads, HEADS)
    pid_s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2)
    s_offs = (pid_s * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    d_offs = tl.arange(0, BLOCK_HALF)
    mask = (s_offs < seq_len)[:, None] & (d_offs < half)[None, :]

    # cos/sin of this token block: loaded once, reused for every head of the group.
    c_base = cos_ptr + b * c_sb + s_offs[:, None] * c_ss + d_offs[None, :]
    s_base = sin_ptr + b * sn_sb + s_offs[:, None] * sn_ss + d_offs[None, :]
    c1 = tl.load(c_base, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(c_base + half, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(s_base, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(s_base + half, mask=mask, other=0.0).to(tl.float32)

    if g < n_q_groups:
        _rope_heads(q_ptr, qo_ptr, b, g * HEADS, n_q_heads,
                    q_sb, q_sh, q_ss, qo_sb, qo_sh, qo_ss, s_offs, d_offs, mask, half, c1, c2, s1, s2, HEADS)
    else:
        _rope_heads(k_ptr, ko_ptr, b, (g - n_q_groups) * HEADS, n_k_heads,
                    k_sb, k_sh, k_ss, ko_sb, ko_sh, ko_ss, s_offs, d_offs, mask, half, c1, c2, s1, s2, HEADS)


# Bounded autotune for prefill-sized inputs (4 configs): token-block height x heads per program.
# H100 sweeps (CUDA-graph GPU time, Llama prefill, 82 MiB): 35.7-39.2 us for all shapes, about
# torch's copy of the same bytes (34.8 us); one head per program, (16, 1, 4 warps) and (32, 1, 8),
# was fastest at 35.6-36.0 us and (16, 8) slowest at 38.8. This set is the one the committed
# l1_peers run measured (the tuner picked (64, 2, 8 warps): 36.3 us when re-measured).
_CONFIGS = [
    triton.Config({"BLOCK_S": 16, "HEADS": 8}, num_warps=4),
    triton.Config({"BLOCK_S": 32, "HEADS": 4}, num_warps=4),
    triton.Config({"BLOCK_S": 16, "HEADS": 2}, num_warps=4),
    triton.Config({"BLOCK_S": 64, "HEADS": 2}, num_warps=8),
]
_rope_tuned = triton.autotune(configs=_CONFIGS, key=["n_q_heads", "n_k_heads", "half", "seq_bucket"])(_rope_kernel)
_TUNE_MIN_ELEMENTS = 1 << 20  # decode (one token, 40 heads of 128) is launch-bound: no tuning
_TUNED: dict = {}  # autotune key -> the config the autotuner picked, launched directly after


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=256)  # pure in its ints: decode calls skip the Python arithmetic
def rope_config(batch: int, seq: int, half: int) -> dict:
    """The untuned launch {BLOCK_S, HEADS, num_warps}: 16 tokens x 128 dims = 2048 elements per head
    (4 KiB bf16) per step with 4 warps, one 16-byte load per thread per half. Many token blocks group
    8 heads per program; decode (one token) gives every head its own program, so 40 heads run in
    parallel instead of 5 groups in series."""
    block_s = min(16, _p2(max(seq, 1)))
    n_blocks = batch * _cdiv(seq, block_s)
    heads = 8 if n_blocks >= 128 else (2 if n_blocks >= 16 else 1)
    tile = block_s * _p2(half) * 2
    return {"BLOCK_S": block_s, "HEADS": heads, "num_warps": max(1, min(8, tile // 512))}


def _p2(n: int) -> int:
    """triton.next_power_of_2 without its per-call overhead (~1.5 us on a CPU: it sits on the decode path)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# ---- launching: Triton's JIT once per argument signature, then the compiled kernel directly ----

# fastkernels: include ops

# fastkernels: include launch


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, config: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B,Hq,S,D], k [B,Hkv,S,D], cos/sin [B or 1,S,D] -> (q_rot, k_rot), HF apply_rotary_pos_emb
    with unsqueeze_dim=1. config = {"BLOCK_S", "HEADS", "num_warps"} (any subset) skips the tuner."""
    if config is None and torch.compiler.is_compiling():
        return _ROTARY(q, k, cos, sin)
    return _apply_rotary(q, k, cos, sin, config)


def _apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  config: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    bsz, n_q, seq, dim = q.shape
    n_k = k.shape[1]
    half = dim // 2
    q, k = _unit_last(q), _unit_last(k)
    cos = _unit_last(cos.expand(bsz, seq, dim))
    sin = _unit_last(sin.expand(bsz, seq, dim))
    out_dtype = torch.promote_types(q.dtype, cos.dtype)
    q_out = torch.empty_like(q, dtype=out_dtype)  # same layout as q (eager elementwise keeps it)
    k_out = torch.empty_like(k, dtype=torch.promote_types(k.dtype, cos.dtype))
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    bucket = _p2(bsz * seq)
    args = (
        q, k, cos, sin, q_out, k_out, seq, half, n_q, n_k,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), bucket,
    )
    block_half = _p2(half)

    def grid(meta):
        heads = meta["HEADS"]
        return (_cdiv(seq, meta["BLOCK_S"]), bsz, _cdiv(n_q, heads) + _cdiv(n_k, heads))

    if config is None and (q.numel() + k.numel()) >= _TUNE_MIN_ELEMENTS and not _interpreting():
        tkey = (n_q, n_k, half, bucket, q.dtype, k.dtype, cos.dtype)
        config = _TUNED.get(tkey)
        if config is None:  # the first call of this key times the configs (and launches the best)
            best = _tune_and_run(_rope_tuned, grid, args, {"BLOCK_HALF": block_half})
            if best is not None:
                _TUNED[tkey] = best
            return q_out, k_out
    cfg = {**rope_config(bsz, seq, half), **(config or {})}
    meta = {"BLOCK_S": cfg["BLOCK_S"], "BLOCK_HALF": block_half, "HEADS": cfg["HEADS"],
            "num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages", 3)}
    _launch(_rope_kernel, grid(cfg), args, meta)
    return q_out, k_out


def _rotary_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _apply_rotary(q, k, cos, sin, None)


_ROTARY = _register_op("rotary_embedding", _rotary_op)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return apply_rotary(q, k, cos, sin)
