"""RMSNorm as one Triton pass: a program loads a [BLOCK_M, BLOCK_N] tile of whole rows once,
reduces the sum of squares in fp32 in registers, and writes weight * (x * rstd) with the HF
module's rounding (the normalised value is cast to x's dtype BEFORE the weight multiply).

Bytes: read x once, write y once, the weight from L2 once per program. At 4096 x 4096 bf16 that is
64 MiB, ~22 us at the H100's ~3 TB/s copy bandwidth; the eager module runs 6 kernels over ~4x that.

Two launch shapes of the same kernel, chosen on the GPU by a bounded autotune (4 configs, keyed on
the width and the power-of-two row count) for prefill-sized inputs:
- one tile per program (grid = row tiles): short-lived programs, 8 resident per SM;
- persistent: a few programs per SM walk the row tiles, and Triton's pipeliner prefetches the next
  tiles into shared memory (cp.async, `num_stages` deep) while the current one is reduced and
  stored, so each SM keeps a steady stream of loads in flight and no wave tail.
Decode-sized inputs (a few rows) skip the tuner; the tuner's pick is remembered per width and row
bucket and launched directly after the first call.

Measured on an H100 (CUDA-graph GPU time, L2 flushed; benchmarks/results/l1_peers): every launch
shape lands within 28.0-30.2 us at 4096 x 4096 bf16 (~79% of the 1 GiB copy rate), the time torch's
own copy of the same 64 MiB takes (28.2 us); Liger 29.0-29.2 us, torch.compile 28.9 us. The shapes
differ by less than the run-to-run spread, so the tuner's choice barely matters here.
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
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    n_rows,
    n_cols,
    x_row_stride,
    out_row_stride,
    row_bucket,  # autotune key only: the power-of-two bucket of n_rows
    EPS: tl.constexpr,  # a constant: a runtime float is fp64 under Inductor
    TILE: tl.constexpr,  # tuning knob only: elements per program step; BLOCK_M = TILE // BLOCK_N
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CTAS_PER_SM: tl.constexpr,  # 0: one tile per program; else the grid is SMs x this (persistent)
    STAGES: tl.constexpr,  # tiles in flight per program (>1: cp.async prefetch into shared memory)
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    # The weight is shared by every row this program touches: one L2 read per program.
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in tl.range(pid, n_tiles, n_progs, num_stages=STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)  # rows * stride overflows int32 past 2**31 elements
        # The tile never leaves registers between the reduction and the scaling: x is read once.
        x = tl.load(x_ptr + rows64[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0)
        xf = x.to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=1) / n_cols + EPS)  # one MUFU op, as torch.rsqrt on CUDA
        # HF rounds the normalised value to the input dtype before the weight multiply.
        h = (xf * rstd[:, None]).to(x.dtype).to(tl.float32)
        y = h * w[None, :]
        tl.store(out_ptr + rows64[:, None] * out_row_stride + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _p2(n: int) -> int:
    """triton.next_power_of_2 without its per-call overhead (~1.5 us on a CPU: it sits on the decode path)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _tile_m(n_cols: int, n_rows: int, tile: int = 4096) -> int:
    # ~`tile` elements (4096: 8 KiB of bf16) per program step: a Llama row (4096) is one tile;
    # Qwen3's per-head norms (128 wide, 131072 rows at 4096 tokens x 32 heads) pack 32 rows per
    # tile, so there are 4096 tiles of 8 KiB rather than 131072 of 256 bytes.
    return max(1, min(tile // _p2(n_cols), _p2(max(n_rows, 1))))


# The launch shapes (see the module docstring) the bounded autotune picks from for prefill-sized
# inputs. TILE is the elements per program step (BLOCK_M = TILE // row width). H100, Llama prefill:
# 28.3 / 28.8 / 28.7 / 30.2 us in this order; Qwen3 qk-norm (128 wide): 28.3-29.7 us for all.
_CONFIGS = [
    triton.Config({"CTAS_PER_SM": 0, "STAGES": 1, "TILE": 4096}, num_warps=8),
    triton.Config({"CTAS_PER_SM": 8, "STAGES": 2, "TILE": 8192}, num_warps=4),
    triton.Config({"CTAS_PER_SM": 4, "STAGES": 3, "TILE": 8192}, num_warps=8),
    triton.Config({"CTAS_PER_SM": 2, "STAGES": 4, "TILE": 4096}, num_warps=16),
]
_rms_norm_tuned = triton.autotune(configs=_CONFIGS, key=["n_cols", "row_bucket"])(
    triton.heuristics(
        {
            "BLOCK_N": lambda a: _p2(a["n_cols"]),
            "BLOCK_M": lambda a: _tile_m(a["n_cols"], a["n_rows"], a["TILE"]),
        }
    )(_rms_norm_kernel)
)
_TUNE_MIN_ELEMENTS = 1 << 20  # below ~1M elements (256 Llama rows) launch latency dominates: no tuning
_TUNED: dict = {}  # (width, row bucket, dtypes) -> the config the autotuner picked, launched directly


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:  # a device property, read once (no per-call query)
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _grid(n_rows: int, block_m: int, ctas_per_sm: int, n_sms: int) -> tuple[int]:
    tiles = _cdiv(n_rows, block_m)
    return (tiles if not ctas_per_sm else min(tiles, n_sms * ctas_per_sm),)


@functools.lru_cache(maxsize=256)  # pure in its ints: decode calls skip the Python arithmetic
def rms_norm_config(n_rows: int, n_cols: int) -> dict:
    """The untuned launch (decode, CPU interpreter): one tile per program, warps by tile size."""
    block_m = _tile_m(n_cols, n_rows)
    tile = block_m * _p2(n_cols)
    return {"BLOCK_M": block_m, "CTAS_PER_SM": 0, "STAGES": 1, "num_warps": max(1, min(16, tile // 512))}


# ---- launching: Triton's JIT once per argument signature, then the compiled kernel directly ----

# fastkernels: include ops

# fastkernels: include launch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, config: dict | None = None) -> torch.Tensor:
    """weight * cast(x * rsqrt(mean(x^2) + eps)) over the last dim of x (any leading shape).

    config = {"BLOCK_M" or "TILE", "CTAS_PER_SM", "STAGES", "num_warps", "num_stages"} (any subset)
    skips the tuner."""
    if config is None and torch.compiler.is_compiling():
        return _RMS_NORM(x, weight, float(eps))
    return _rms_norm(x, weight, eps, config)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, config: dict | None) -> torch.Tensor:
    n_cols = x.shape[-1]
    out_dtype = torch.promote_types(weight.dtype, x.dtype)  # the module's `weight * h` promotes
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)  # contiguous: rows of n_cols
    if x.is_contiguous():  # rows of any leading shape, read in place (no reshape on the decode path)
        x2, x_stride = x, n_cols
        n_rows = x.numel() // n_cols if n_cols else 0
    else:
        x2 = x.reshape(-1, n_cols)
        if n_cols > 1 and x2.stride(-1) != 1:  # rows must be unit-stride for coalesced loads
            x2 = x2.contiguous()
        n_rows, x_stride = x2.shape[0], x2.stride(0)
    w = weight if weight.is_contiguous() else weight.contiguous()
    if n_rows == 0 or n_cols == 0:
        return out
    n_sms = _sm_count(x.device)
    bucket = _p2(n_rows)
    args = (x2, w, out, n_rows, n_cols, x_stride, n_cols, bucket)
    if config is None and n_rows * n_cols >= _TUNE_MIN_ELEMENTS and not _interpreting():
        tkey = (n_cols, bucket, x2.dtype, w.dtype)
        config = _TUNED.get(tkey)
        if config is None:  # the first call of this bucket times the configs (and launches the best)
            grid = lambda meta: _grid(n_rows, meta["BLOCK_M"], meta["CTAS_PER_SM"], n_sms)  # noqa: E731
            best = _tune_and_run(_rms_norm_tuned, grid, args, {"EPS": float(eps)})
            if best is not None:
                _TUNED[tkey] = best
            return out
    cfg = {**rms_norm_config(n_rows, n_cols), **(config or {})}
    block_n = _p2(n_cols)
    if "TILE" in (config or {}) and "BLOCK_M" not in config:
        cfg["BLOCK_M"] = _tile_m(n_cols, n_rows, cfg["TILE"])
    meta = {"EPS": float(eps), "TILE": cfg["BLOCK_M"] * block_n, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": block_n, "CTAS_PER_SM": cfg["CTAS_PER_SM"],
            "STAGES": cfg["STAGES"], "num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages", 3)}
    _launch(_rms_norm_kernel, _grid(n_rows, cfg["BLOCK_M"], cfg["CTAS_PER_SM"], n_sms), args, meta)
    return out


def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_norm(x, weight, eps, None)


_RMS_NORM = _register_op("rms_norm", _rms_norm_op)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)
