"""Causal grouped-query attention over a KV cache, in Triton, two ways:

Prefill (S > 1): flash attention. One program owns BLOCK_M query rows of one head, streams that
head's K/V in BLOCK_N blocks and keeps an online softmax (running max m, running sum l, fp32
accumulator) in registers, so the [S, P+S] score matrix never touches memory. Causal masking
(bottom-right: row i sees keys 0..P+i) is split into a loop over key blocks every row sees (no
mask arithmetic at all) and the 1-3 blocks on the diagonal (masked); blocks above it are never
loaded. The softmax runs in base 2 with scale * log2(e) folded into one FMA per score (the
exp/FMA pipe, not the tensor cores, bounds this loop on Hopper). Programs run the heaviest query
blocks first (the last rows see the most keys), so the grid's tail is made of short blocks. On
Hopper, K and V tiles arrive through TMA descriptors (UTMALDG + mbarrier waits in the sm_90 SASS,
157 registers instead of 186 for cp.async pointer loads) and both dots are wgmma (HGMMA.64xNx16);
a bounded autotune (4 configs) picks the tile shape per head dim and length bucket.
Llama-3.1-8B, 4096 tokens: 137 GFLOP of useful work. Measured on an H100 (CUDA-graph GPU time):
281 us (489 TFLOP/s) against SDPA's flash backend 498 us and SDPA's default choice 260 us; error
against an fp32 reference the same as SDPA flash's (relative Frobenius 2.05e-3; HF eager bf16
4.8e-3), for every config with and without TMA. The (64, 64, 4 warps) config with TMA is the
fastest (284 us; 338 us without TMA; the 128-row configs 327-355 us).

Decode (S = 1): flash-decoding. One token per sequence gives one query row per head: far too
little work for 132 SMs if each head streamed its whole 4096-token cache alone. The cache is split
into chunks; one program per (sequence, KV head, chunk) loads the chunk's K and V ONCE for all
Hq/Hkv query heads of the group (packed as the rows of a 16-row tile, so the dots run on tensor
cores), and writes a partial (max, sum, unnormalised output); a second small launch merges the
partials. Bytes: K+V of 4096 x 8 heads x 128 bf16 = 16 MiB, ~5.5 us at ~3 TB/s. Measured on an
H100 as a CUDA graph (whose launch alone costs ~5-6 us; benchmarks/results/l1_peers): 16.1 us
against SDPA's 18.0 us at Llama decode, 15.3 us against 15.6 us at Qwen2.5-7B (7 query heads per
kv head, 22 chunks). Called eagerly, SDPA's one launch beats our two on the host (62 vs 71 us per
back-to-back call at Llama decode).

Numerics as HF eager: scores in fp32 (eager rounds them to bf16 first; this is closer to exact),
softmax in fp32, probabilities cast to q's dtype before the multiply with v, fp32 accumulation.
fp32 inputs use 3-pass tf32 dots (~fp32 accuracy on tensor cores) instead of single tf32.
Output [B, S, Hq, D] contiguous, written directly in that layout (no transpose pass).
"""

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn
from triton import knobs

_LOG2E = 1.4426950408889634


def _cdiv(a: int, b: int) -> int:
    """triton.cdiv without its per-call overhead (a ConstexprFunction: ~3 us per host call on a CPU)."""
    return -(-a // b)


def _p2(n: int) -> int:
    """triton.next_power_of_2 without its per-call overhead (~1.5 us on a CPU: it sits on the decode path)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


@triton.jit
def _mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST is set only under the CPU interpreter, whose tl.dot multiplies the raw bits of bf16
    # operands (triton-lang/triton#11584). bf16 x bf16 products are exact in fp32, so the upcast
    # computes what the GPU's bf16 MMA with fp32 accumulation computes.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_base, v_base, stride_kn, stride_vn, k_desc, v_desc, kv_row0,
    offs_m, offs_d, d_mask,
    lo, hi, n_keys, past, qk_scale,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr,
):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_ptrs = k_base + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None]  # K^T tile [D, N]
        v_ptrs = v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :]  # V tile [N, D]
        if MASKED:
            n_ok = offs_n < n_keys
        if TMA:
            # Hopper's copy engine fetches the [N, D] tile into shared memory (one thread issues
            # it, no address registers); rows past this head's keys belong to the next head or
            # are zero-filled past the tensor's end, and the mask below zeroes their weight.
            k = k_desc.load([kv_row0 + start_n, 0]).T
        elif MASKED:
            k = tl.load(k_ptrs, mask=d_mask[:, None] & n_ok[None, :], other=0.0)
        elif EVEN_D:
            k = tl.load(k_ptrs)  # fully visible block: no predicate at all
        else:
            k = tl.load(k_ptrs, mask=d_mask[:, None], other=0.0)
        qk = _mma(q, k, PRECISION, UPCAST)
        if MASKED:
            keep = (offs_n[None, :] <= past + offs_m[:, None]) & n_ok[None, :]
            qk = tl.where(keep, qk, float("-inf"))
        # m is kept in the scaled log2 domain; the scale folds into one FMA per score before exp2
        # (the exp/FMA pipe, not the tensor cores, bounds a Hopper flash-attention loop).
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if TMA:
            v = v_desc.load([kv_row0 + start_n, 0])
        elif MASKED:
            v = tl.load(v_ptrs, mask=n_ok[:, None] & d_mask[None, :], other=0.0)
        elif EVEN_D:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=d_mask[None, :], other=0.0)
        # HF casts the probabilities to the value dtype before P @ V; so do we (bf16 MMA operand).
        acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, k_desc, v_desc,
    seq_q, n_keys, n_heads, n_kv_heads, group, ctx_bucket,
    sq_b, sq_h, sq_s, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_s, so_h,
    qk_scale: tl.constexpr,  # a constant: a runtime float is fp64 under Inductor
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    TMA: tl.constexpr,
):
    # Grid (B*Hq, M blocks): dispatch order walks all heads of the LAST (heaviest) query block
    # first, so the lightest blocks fill the tail of the grid.
    bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = bh % n_heads
    kvh = (h // group).to(tl.int64)
    past = n_keys - seq_q

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D

    q_ptrs = q_ptr + b * sq_b + h.to(tl.int64) * sq_h + offs_m[:, None].to(tl.int64) * sq_s + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m < seq_q)[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b * sk_b + kvh * sk_h
    v_base = v_ptr + b * sv_b + kvh * sv_h
    kv_row0 = ((b * n_kv_heads + kvh) * n_keys).to(tl.int32)  # first row of this head in [B*Hkv*L, D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Keys [0, full_end) are visible to every row of the block; [full_end, diag_end) straddle the
    # diagonal (or the end of the keys) and need the mask. Nothing past diag_end is loaded.
    full_end = ((past + m0 + 1) // BLOCK_N) * BLOCK_N
    diag_end = tl.minimum(past + m0 + BLOCK_M, n_keys)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, sk_n, sv_n, k_desc, v_desc, kv_row0, offs_m, offs_d, d_mask,
        0, full_end, n_keys, past, qk_scale, BLOCK_N, False, EVEN_D, PRECISION, UPCAST, TMA,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, sk_n, sv_n, k_desc, v_desc, kv_row0, offs_m, offs_d, d_mask,
        full_end, diag_end, n_keys, past, qk_scale, BLOCK_N, True, EVEN_D, PRECISION, UPCAST, TMA,
    )

    out = acc / l_i[:, None]
    o_ptrs = o_ptr + b * so_b + offs_m[:, None].to(tl.int64) * so_s + h.to(tl.int64) * so_h + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=(offs_m < seq_q)[:, None] & d_mask[None, :])


def _set_desc_block(nargs):
    # The TMA descriptors' box is the config's [BLOCK_N, HEAD_DIM] tile (set per tried config).
    if nargs.get("TMA"):
        for name in ("k_desc", "v_desc"):
            nargs[name].block_shape = [nargs["BLOCK_N"], nargs["HEAD_DIM"]]


# Bounded autotuning for the compute-bound prefill: 4 configs, keyed on head dim and the
# power-of-two bucket of the length (a new prompt length does not re-tune). 128-row query blocks
# with 8 warps are two warpgroups of 64 rows for Hopper's wgmma (HGMMA.64x128x16 and 64x64x16 in
# the sm_90 SASS). ptxas at head_dim 128, bf16: 186 / 252 / 186 / 170 registers, no spills, 128 /
# 160 / 160 / 112 KiB of shared memory (K and V stages). (128, 64) with 4 warps was dropped: it
# needs 255 registers and spills 224 bytes per thread.
_PREFILL_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3, pre_hook=_set_desc_block),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2, pre_hook=_set_desc_block),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=4, pre_hook=_set_desc_block),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3, pre_hook=_set_desc_block),
]
_attn_prefill_tuned = triton.autotune(
    configs=_PREFILL_CONFIGS, key=["HEAD_DIM", "ctx_bucket", "PRECISION", "UPCAST", "TMA"]
)(_attn_prefill_kernel)
# The same configs for a compiled graph: Inductor runs no config pre_hook, and its traced operator
# bodies build no host TMA descriptors, so the graph loads K/V through pointers (H100, Llama
# prefill of 4096 tokens: 338 us where the TMA loads take 284 us).
_attn_prefill_tuned_graph = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in _PREFILL_CONFIGS],
    key=["HEAD_DIM", "ctx_bucket", "PRECISION", "UPCAST", "TMA"],
)(_attn_prefill_kernel)


@triton.jit
def _attn_decode_partial_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_ptr, pos_ptr,
    ml_offset, n_keys, n_kv_heads, group, chunk, n_splits,
    sq_b, sq_h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h,
    qk_scale: tl.constexpr,  # a constant: a runtime float is fp64 under Inductor
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DIRECT: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    STATIC: tl.constexpr,  # k/v are a static cache's whole buffers: the keys end at pos_ptr's slot
):
    # One program: (sequence b, kv head, chunk of the cache). Its rows are the `group` query heads
    # that share this kv head, so each K/V byte is loaded once per group, not once per query head.
    bkv = tl.program_id(0)
    split = tl.program_id(1)
    b = (bkv // n_kv_heads).to(tl.int64)
    kvh = bkv % n_kv_heads
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < group
    d_mask = offs_d < HEAD_DIM
    heads = (kvh * group + offs_g).to(tl.int64)  # query heads of this group

    q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + offs_d[None, :], mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b * sk_b + kvh.to(tl.int64) * sk_h
    v_base = v_ptr + b * sv_b + kvh.to(tl.int64) * sv_h

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if STATIC:  # read on the device: a CUDA graph replays this launch at every position
        n_keys = tl.load(pos_ptr).to(tl.int32) + 1
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n_keys)  # a chunk past the last key runs no step: m = -inf, l = 0
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        # One query per sequence sits at the last position: it sees every cached key, so the only
        # mask is the end of the cache.
        offs_n = start_n + offs_n0
        n_ok = offs_n < hi
        k = tl.load(k_base + offs_n[None, :].to(tl.int64) * sk_n + offs_d[:, None], mask=d_mask[:, None] & n_ok[None, :], other=0.0)
        qk = _mma(q, k, PRECISION, UPCAST) * qk_scale
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * sv_n + offs_d[None, :], mask=n_ok[:, None] & d_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new

    if DIRECT:  # the whole cache in one chunk: normalise and write the output, no merge launch
        out = acc / l_i[:, None]
        o_ptrs = o_ptr + b * so_b + heads[:, None] * so_h + offs_d[None, :]
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        # partials laid out [B*Hq, n_splits, ...] so the merge reads each head's splits contiguously
        row = (b * n_kv_heads * group + heads) * n_splits + split
        # one buffer: [rows, BLOCK_D] partial outputs, then [rows, 2] (max, sum) from ml_offset on
        tl.store(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :], acc, mask=g_mask[:, None])
        tl.store(part_ptr + ml_offset + row * 2, m_i, mask=g_mask)
        tl.store(part_ptr + ml_offset + row * 2 + 1, l_i, mask=g_mask)


@triton.jit
def _attn_decode_merge_kernel(
    part_ptr, o_ptr, ml_offset,
    n_heads, n_splits, so_b, so_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    # out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s, one program per (sequence, query head).
    # The [splits, D] partial outputs are summed CHUNK splits at a time: a register tile of all of
    # them spills past 128 splits (255 registers + 104 bytes of stack at 256, head_dim 128).
    bh = tl.program_id(0)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    row0 = bh.to(tl.int64) * n_splits
    offs_s = tl.arange(0, BLOCK_SPLITS)
    s_mask = offs_s < n_splits
    part_ml_ptr = part_ptr + ml_offset
    m = tl.load(part_ml_ptr + (row0 + offs_s) * 2, mask=s_mask, other=float("-inf"))
    l = tl.load(part_ml_ptr + (row0 + offs_s) * 2 + 1, mask=s_mask, other=0.0)
    m_max = tl.max(m, 0)
    l_sum = tl.sum(l * tl.math.exp2(m - m_max), 0)  # a split with no keys has m = -inf: weight 0
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, CHUNK)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c0 in range(0, n_splits, CHUNK):
        rows = c0 + offs_c
        c_mask = rows < n_splits
        w = tl.math.exp2(tl.load(part_ml_ptr + (row0 + rows) * 2, mask=c_mask, other=float("-inf")) - m_max)
        part = tl.load(part_ptr + (row0 + rows)[:, None] * BLOCK_D + offs_d[None, :], mask=c_mask[:, None], other=0.0)
        acc += tl.sum(part * w[:, None], 0)
    tl.store(o_ptr + b * so_b + h * so_h + offs_d, (acc / l_sum).to(o_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:  # a device property, read once (no sync, no per-call query)
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _precision(dtype: torch.dtype) -> str:
    # fp32 checks hold at ~1e-5 with 3-pass tf32; single-pass tf32 would be off by ~1e-3.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


_CAPABILITY: dict = {}


def _is_hopper_or_newer(device: torch.device) -> bool:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CAPABILITY:  # a device property, read once
        _CAPABILITY[idx] = torch.cuda.get_device_capability(idx)
    return _CAPABILITY[idx][0] >= 9


def _tma_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim: int, block_d: int) -> bool:
    """K and V can be read through Hopper TMA descriptors over their [B*Hkv*L, D] view."""
    if _interpreting() or q.device.type != "cuda" or _traced(q) or not _is_hopper_or_newer(q.device):
        return False
    return (
        dim == block_d
        and k.is_contiguous()
        and v.is_contiguous()
        and (dim * k.element_size()) % 16 == 0
        and k.data_ptr() % 16 == 0
        and v.data_ptr() % 16 == 0
    )


def attention_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scaling: float,
    *,
    config: dict | None = None,
    tma: bool | None = None,
) -> torch.Tensor:
    """Causal (bottom-right) GQA flash attention for any S >= 1 new tokens over P+S keys.
    q [B,Hq,S,D], k/v [B,Hkv,P+S,D] (any strides, unit-stride D) -> [B,S,Hq,D] contiguous.
    config = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} skips the autotuner; tma forces
    (True) or forbids (False) TMA descriptor loads of K/V (default: on Hopper when K/V are contiguous)."""
    bsz, n_heads, seq_q, dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    out = torch.empty((bsz, seq_q, n_heads, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    block_d = max(16, _p2(dim))
    precision = _precision(q.dtype)
    qk_scale = float(scaling) * _LOG2E
    if config is None and (_interpreting() or seq_q < 128 or q.dtype == torch.float32 or dim > 128):
        # Short chunks, fp32 and the CPU interpreter: one safe config. fp32 tiles take twice the
        # shared memory and 3-pass tf32 dots twice the registers: 32 x 32 is the largest tile that
        # ptxas fits at head_dim 128 without spilling (255 registers; 64 x 32 spills 472 bytes).
        fp32 = q.dtype == torch.float32
        bm = max(16, min(32 if fp32 else 64, _p2(seq_q)))
        config = {"BLOCK_M": bm, "BLOCK_N": 32 if fp32 else 64, "num_warps": 4, "num_stages": 2}
    use_tma = _tma_ok(q, k, v, dim, block_d) if tma is None else bool(tma)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block_n = config["BLOCK_N"] if config is not None else 64  # the autotuner's pre_hook resets it
        k2, v2 = k.contiguous().view(-1, dim), v.contiguous().view(-1, dim)
        k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [block_n, dim])
        v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [block_n, dim])
    else:
        k_desc, v_desc = k, v  # unused by the pointer variant
    args = (
        q, k, v, out, k_desc, v_desc, seq_q, n_keys, n_heads, n_kv, group, _p2(seq_q),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
    )
    if config is None:
        grid = lambda meta: (bsz * n_heads, _cdiv(seq_q, meta["BLOCK_M"]))  # noqa: E731
        tuned = _attn_prefill_tuned_graph if _traced(q) else _attn_prefill_tuned
        _run(tuned, grid, args,
             {"qk_scale": qk_scale, "HEAD_DIM": dim, "BLOCK_D": block_d, "PRECISION": precision, "UPCAST": False,
              "TMA": use_tma})
    else:
        grid = (bsz * n_heads, _cdiv(seq_q, config["BLOCK_M"]))
        _run(_attn_prefill_kernel, grid, args, {
            "qk_scale": qk_scale, "HEAD_DIM": dim, "BLOCK_D": block_d, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
            "PRECISION": precision, "UPCAST": _interpreting(), "TMA": use_tma,
            "num_warps": config.get("num_warps", 4), "num_stages": config.get("num_stages", 2)})
    return out


# ---- launching: Triton's JIT once per argument signature, then the compiled kernel directly ----

# fastkernels: include ops

# fastkernels: include launch


def decode_splits(bsz: int, n_kv_heads: int, n_keys: int, block_n: int, n_sms: int) -> tuple[int, int]:
    """(chunk, n_splits): at most about one (sequence, kv head, chunk) program per SM, and chunks of
    at least ~192 keys, each a multiple of BLOCK_N. H100, CUDA-graph GPU time
    (benchmarks/results/l1_peers/l1_tune.md): Llama-3.1-8B decode (B=1, 8 kv heads, 4097 keys)
    gets 13 chunks of 320 keys (104 programs): 18.0 us vs 18.8 at 22 chunks and 19.7 at 33;
    Qwen2.5-7B (4 kv heads) gets 22 chunks of 192 keys (88 programs): 15.3 us vs 15.9 at 13 and
    16.0 at 33."""
    want = max(1, min(n_sms // max(1, bsz * n_kv_heads), _cdiv(n_keys, 192)))
    chunk = _cdiv(_cdiv(n_keys, want), block_n) * block_n
    return chunk, _cdiv(n_keys, chunk)


@functools.lru_cache(maxsize=1024)  # pure in its arguments: a decode step reuses its launch plan
def _decode_plan(bsz, n_heads, dim, n_kv, n_keys, dtype, n_sms, n_splits, block_n, num_warps, num_stages,
                 qk_scale, static=False):
    fp32 = dtype == torch.float32
    block_n = block_n or (32 if fp32 else 64)
    block_d = max(16, _p2(dim))
    if n_splits is None:
        chunk, splits = decode_splits(bsz, n_kv, n_keys, block_n, n_sms)
    else:
        chunk = _cdiv(_cdiv(n_keys, n_splits), block_n) * block_n
        splits = _cdiv(n_keys, chunk)
    partial_meta = {
        "qk_scale": qk_scale, "HEAD_DIM": dim, "BLOCK_D": block_d, "BLOCK_G": max(16, _p2(n_heads // n_kv)),
        "BLOCK_N": block_n, "DIRECT": splits == 1, "PRECISION": _precision(dtype), "UPCAST": _INTERPRET,
        "STATIC": bool(static),
        "num_warps": num_warps or (8 if fp32 else 4), "num_stages": num_stages or (2 if fp32 else 3),
    }
    merge_meta = {"HEAD_DIM": dim, "BLOCK_D": block_d, "BLOCK_SPLITS": _p2(splits), "CHUNK": 16,
                  "num_warps": 4}
    rows = bsz * n_heads * splits
    return chunk, splits, rows, rows * block_d, partial_meta, merge_meta


def attention_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scaling: float,
    *,
    n_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    cache_position: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new token per sequence (q [B,Hq,1,D]) over its whole cache k/v [B,Hkv,L,D] -> [B,1,Hq,D];
    with cache_position (the static-cache form) only keys 0..cache_position[0] count, a bound the
    kernel reads on the device (chunks past it run no step; the plan is the whole buffer's).
    Split-K flash-decoding: two launches (partials, then a merge with one program per query head),
    or one when a single chunk suffices. (A one-launch variant, where the last chunk of each kv head
    merged the partials, measured slower on the H100: 20.2 vs 18.4 us at Llama decode as CUDA
    graphs, benchmarks/results/l1_peers/l1_run1_fused_merge.md: one program's serial merge tail
    costs more than the second launch.)
    The launch plan is cached per shape and both kernels are launched directly (see _launch): a
    decode step is bound by host work, not by the GPU's ~14 us.

    bf16: 64-key blocks, 4 warps, 3 stages (87 registers, 70 KiB shared at head_dim 128, so 3
    programs fit an SM). fp32: 32-key blocks, 8 warps, 2 stages (3-pass tf32 dots; 162 registers,
    where the bf16 shape spills 72-96 bytes)."""
    bsz, n_heads, seq_q, dim = q.shape
    assert seq_q == 1
    n_kv, n_keys = k.shape[1], k.shape[2]
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    out = torch.empty((bsz, 1, n_heads, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    chunk, splits, rows, n_part_o, partial_meta, merge_meta = _decode_plan(
        bsz, n_heads, dim, n_kv, n_keys, q.dtype, _sm_count(q.device), n_splits, block_n, num_warps, num_stages,
        float(scaling) * _LOG2E, cache_position is not None,
    )
    pos = cache_position if cache_position is not None else q  # unread without STATIC
    traced = _traced(q)
    if splits > 1:
        part = torch.empty(n_part_o + 2 * rows, dtype=torch.float32, device=q.device)
    else:  # unused (DIRECT); a graph node's arguments must not alias the output it writes
        part = torch.empty(1, dtype=torch.float32, device=q.device) if traced else out
    qs, ks, vs = q.stride(), k.stride(), v.stride()
    key = None
    if not traced and not ((q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15):  # out and part: fresh, aligned
        key = (bsz, n_heads, dim, n_kv, n_keys, q.dtype, k.dtype, v.dtype, qs, ks, vs, q.device.index,
               n_splits, block_n, num_warps, num_stages, scaling, cache_position is not None)
    _launch(
        _attn_decode_partial_kernel, (bsz * n_kv, splits),
        (q, k, v, out, part, pos, n_part_o, n_keys, n_kv, n_heads // n_kv, chunk, splits,
         qs[0], qs[1], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], n_heads * dim, dim),
        partial_meta, key,
    )
    if splits > 1:
        _launch(_attn_decode_merge_kernel, (bsz * n_heads,), (part, out, n_part_o, n_heads, splits, n_heads * dim, dim),
                merge_meta, key)
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
              cache_position: torch.Tensor | None = None) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _ATTENTION(q, k, v, float(scaling), cache_position)
    return _attention(q, k, v, scaling, cache_position)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
               cache_position: Optional[torch.Tensor] = None) -> torch.Tensor:
    if q.shape[2] == 1:
        return attention_decode(q, k, v, scaling, cache_position=cache_position)
    if cache_position is not None:
        return _static_prefill(q, k, v, scaling, cache_position)
    return attention_prefill(q, k, v, scaling)


def _static_prefill(q, k, v, scaling: float, cache_position: torch.Tensor) -> torch.Tensor:
    """Several new tokens over a static cache's whole buffers (a prompt, once per generate): torch's
    ops with the baseline's rounding points, the mask built on the device. Not a kernel of ours:
    the step that repeats, decode, is."""
    b, hq, s, d = q.shape
    hkv, total = k.shape[1], k.shape[2]
    qg = q.reshape(b, hkv, (hq // hkv) * s, d)  # grouped by kv head: no copy of the cache
    scores = torch.matmul(qg, k.transpose(2, 3)).view(b, hq, s, total) * scaling
    seen = torch.arange(total, device=q.device)[None, :] <= cache_position[:, None]
    scores = scores.masked_fill(~seen, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs.view(b, hkv, (hq // hkv) * s, total), v).view(b, hq, s, d)
    return out.transpose(1, 2).contiguous()


_ATTENTION = _register_op("attention", _attention)


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_position=None) -> torch.Tensor:
        return attention(q, k, v, self.scaling, cache_position)
