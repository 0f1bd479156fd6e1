"""Residual add fused with RMSNorm in one Triton pass: a program loads a tile of rows of x and
residual once, writes residual_out = residual + x (rounded to the stream's dtype, as the eager add
is), and normalises that rounded sum from registers. Bytes: read 2 tensors, write 2, nothing else;
at 4096 x 4096 bf16 that is 128 MiB, ~44 us at the H100's ~3 TB/s copy bandwidth, where eager
runs the add plus the 6 kernels of RMSNorm and moves ~3x the bytes.

The normalised value is cast to the input dtype BEFORE the weight multiply, as the HF module does.
Launch shapes as in rms_norm.py: one tile per program, or persistent programs whose next tiles are
prefetched into shared memory (cp.async); a bounded autotune (4 configs) picks on the GPU for
prefill-sized inputs, decode-sized ones take the one-tile-per-program launch untuned.
H100 (CUDA-graph GPU time): 50.5 us at Llama prefill (88% of the 1 GiB copy rate; torch's copy of
the same 128 MiB: 50.1 us), Liger 50.7, torch.compile 51.7 us.
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
def _add_rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    normed_ptr,
    res_out_ptr,
    n_rows,
    n_cols,
    x_row_stride,
    res_row_stride,
    row_bucket,  # autotune key only: the power-of-two bucket of n_rows
    EPS: tl.constexpr,  # a constant: a runtime float is fp64 under Inductor
    TILE: tl.constexpr,  # tuning knob only: elements per operand per program step; BLOCK_M = TILE // BLOCK_N
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CTAS_PER_SM: tl.constexpr,  # 0: one tile per program; else the grid is SMs x this (persistent)
    STAGES: tl.constexpr,  # tiles in flight per program (>1: cp.async prefetch into shared memory)
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)  # once per program
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in tl.range(pid, n_tiles, n_progs, num_stages=STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)  # rows * stride overflows int32 past 2**31 elements
        x = tl.load(x_ptr + rows64[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0)
        r = tl.load(res_ptr + rows64[:, None] * res_row_stride + cols[None, :], mask=mask, other=0.0)
        # The residual stream is kept in its own dtype: round the sum once, store it, and normalise
        # the rounded value (what the next layer will read back), exactly as eager does.
        s = (r.to(tl.float32) + x.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
        out_offs = rows64[:, None] * n_cols + cols[None, :]  # both outputs are fresh contiguous tensors
        tl.store(res_out_ptr + out_offs, s, mask=mask)
        sf = s.to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(sf * sf, axis=1) / n_cols + EPS)
        h = (sf * rstd[:, None]).to(s.dtype).to(tl.float32)
        tl.store(normed_ptr + out_offs, (h * w[None, :]).to(normed_ptr.dtype.element_ty), mask=mask)


def _p2(n: int) -> int:
    """triton.next_power_of_2 without its per-call overhead (~1.5 us on a CPU: it sits on the decode path)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _tile_m(n_cols: int, n_rows: int, tile: int = 4096) -> int:
    # ~`tile` elements per operand per program step (4096: one Llama row), as for RMSNorm.
    return max(1, min(tile // _p2(n_cols), _p2(max(n_rows, 1))))


# Two operands in flight per thread instead of one; the same launch shapes as rms_norm.py.
# H100, Llama prefill: 50.5-50.7 / 52.4 / 51.2 / 52.6 us in this order.
_CONFIGS = [
    triton.Config({"CTAS_PER_SM": 0, "STAGES": 1, "TILE": 4096}, num_warps=8),
    triton.Config({"CTAS_PER_SM": 8, "STAGES": 2, "TILE": 4096}, num_warps=4),
    triton.Config({"CTAS_PER_SM": 0, "STAGES": 1, "TILE": 8192}, num_warps=16),
    triton.Config({"CTAS_PER_SM": 4, "STAGES": 2, "TILE": 4096}, num_warps=8),
]
_add_rms_norm_tuned = triton.autotune(configs=_CONFIGS, key=["n_cols", "row_bucket"])(
    triton.heuristics(
        {
            "BLOCK_N": lambda a: _p2(a["n_cols"]),
            "BLOCK_M": lambda a: _tile_m(a["n_cols"], a["n_rows"], a["TILE"]),
        }
    )(_add_rms_norm_kernel)
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
def add_rms_norm_config(n_rows: int, n_cols: int) -> dict:
    """The untuned launch (decode, CPU interpreter): one tile per program, warps by tile size."""
    block_m = _tile_m(n_cols, n_rows)
    tile = block_m * _p2(n_cols)
    return {"BLOCK_M": block_m, "CTAS_PER_SM": 0, "STAGES": 1, "num_warps": max(1, min(16, tile // 512))}


def _rows(t: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, int]:
    """t as rows of n_cols with a unit-stride last dim, and the row stride (contiguous: in place)."""
    if t.is_contiguous():
        return t, n_cols
    t2 = t.reshape(-1, n_cols)
    t2 = t2 if (n_cols == 1 or t2.stride(-1) == 1) else t2.contiguous()
    return t2, t2.stride(0)


# ---- launching: Triton's JIT once per argument signature, then the compiled kernel directly ----

# fastkernels: include ops

# fastkernels: include launch


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, *, config: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * cast(s * rsqrt(mean(s^2) + eps)), s) with s = residual + x, over the last dim.

    config = {"BLOCK_M" or "TILE", "CTAS_PER_SM", "STAGES", "num_warps", "num_stages"} (any subset)
    skips the tuner."""
    if config is None and torch.compiler.is_compiling():
        return _ADD_RMS_NORM(x, residual, weight, float(eps))
    return _add_rms_norm(x, residual, weight, eps, config)


def _add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                  config: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != residual.shape:
        x, residual = torch.broadcast_tensors(x, residual)
    n_cols = x.shape[-1]
    (x2, x_stride), (r2, r_stride) = _rows(x, n_cols), _rows(residual, n_cols)
    n_rows = x.numel() // n_cols if n_cols else 0
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    res_out = torch.empty(x.shape, dtype=sum_dtype, device=x.device)  # contiguous: rows of n_cols
    normed = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, sum_dtype), device=x.device)
    if not (n_rows and n_cols):
        return normed, res_out
    w = weight if weight.is_contiguous() else weight.contiguous()
    n_sms = _sm_count(x.device)
    bucket = _p2(n_rows)
    args = (x2, r2, w, normed, res_out, n_rows, n_cols, x_stride, r_stride, bucket)
    if config is None and n_rows * n_cols >= _TUNE_MIN_ELEMENTS and not _interpreting():
        tkey = (n_cols, bucket, x2.dtype, r2.dtype, w.dtype)
        config = _TUNED.get(tkey)
        if config is None:  # the first call of this bucket times the configs (and launches the best)
            grid = lambda meta: _grid(n_rows, meta["BLOCK_M"], meta["CTAS_PER_SM"], n_sms)  # noqa: E731
            best = _tune_and_run(_add_rms_norm_tuned, grid, args, {"EPS": float(eps)})
            if best is not None:
                _TUNED[tkey] = best
            return normed, res_out
    cfg = {**add_rms_norm_config(n_rows, n_cols), **(config or {})}
    block_n = _p2(n_cols)
    if "TILE" in (config or {}) and "BLOCK_M" not in config:
        cfg["BLOCK_M"] = _tile_m(n_cols, n_rows, cfg["TILE"])
    meta = {"EPS": float(eps), "TILE": cfg["BLOCK_M"] * block_n, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": block_n,
            "CTAS_PER_SM": cfg["CTAS_PER_SM"], "STAGES": cfg["STAGES"], "num_warps": cfg["num_warps"],
            "num_stages": cfg.get("num_stages", 3)}
    _launch(_add_rms_norm_kernel, _grid(n_rows, cfg["BLOCK_M"], cfg["CTAS_PER_SM"], n_sms), args, meta)
    return normed, res_out


def _add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_rms_norm(x, residual, weight, eps, None)


_ADD_RMS_NORM = _register_op("add_rms_norm", _add_rms_norm_op)


class AddRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(x, residual, self.weight, self.variance_epsilon)
