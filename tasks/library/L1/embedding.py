"""Token embedding lookup as a Triton gather: each program reads BLOCK_T token ids and copies their
[BLOCK_T, BLOCK_H] slice of table rows to the output, 16-byte vectors along the hidden dim. Pure
copy: 4096 tokens x 4096 bf16 = 32 MiB read + 32 MiB written at Llama-3.1-8B prefill, ~22 us at
~3 TB/s. Ids outside [0, V) read nothing and produce zero rows instead of faulting (eager raises).
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
def _embedding_kernel(
    ids_ptr,
    w_ptr,
    out_ptr,
    n_tokens,
    hidden,
    vocab,
    w_row_stride,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_h = tl.program_id(1)
    toks = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    tok_ok = toks < n_tokens
    ids = tl.load(ids_ptr + toks, mask=tok_ok, other=0)
    row_ok = tok_ok & (ids >= 0) & (ids < vocab)
    col_ok = cols < hidden
    rows = tl.load(
        w_ptr + ids.to(tl.int64)[:, None] * w_row_stride + cols[None, :],
        mask=row_ok[:, None] & col_ok[None, :],
        other=0.0,
    )
    tl.store(
        out_ptr + toks.to(tl.int64)[:, None] * hidden + cols[None, :],
        rows,
        mask=tok_ok[:, None] & col_ok[None, :],
    )


@functools.lru_cache(maxsize=256)  # pure in its ints: decode calls skip the Python arithmetic
def embedding_config(n_tokens: int, hidden: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_H, num_warps): 4096-element tiles (one Llama row, or several narrow rows) with
    4 warps at prefill (H100, Llama prefill: 29.0 us as a CUDA graph, 25.4 us of kernel time, vs
    29.8 / 26.2 with 8 warps; benchmarks/results/l1_peers/l1_tune.md); a handful of decode tokens
    split the row into 1024-wide pieces instead, so one token's 8 KiB row is fetched by 4 programs
    in parallel rather than by one."""
    block_h = min(_p2(hidden), 4096 if n_tokens >= 64 else 1024)
    block_t = max(1, min(4096 // block_h, _p2(max(n_tokens, 1))))
    num_warps = max(1, min(4, block_t * block_h // 512))
    return block_t, block_h, num_warps


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---- launching: Triton's JIT once per argument signature, then the compiled kernel directly ----

# fastkernels: include ops

# fastkernels: include launch


def embedding(input_ids: torch.Tensor, weight: torch.Tensor, *, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """weight[input_ids] for any shape of int ids -> [*ids.shape, H] in the table's dtype.
    config = (BLOCK_T, BLOCK_H, num_warps) overrides embedding_config (the peer benchmark sweeps it)."""
    if config is None and torch.compiler.is_compiling():
        return _EMBEDDING(input_ids, weight)
    return _embedding(input_ids, weight, config)


def _embedding(input_ids: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int] | None) -> torch.Tensor:
    vocab, hidden = weight.shape
    ids = input_ids.reshape(-1)
    if not ids.is_contiguous():
        ids = ids.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    n_tokens = ids.numel()
    out = torch.empty((*input_ids.shape, hidden), dtype=weight.dtype, device=weight.device)
    if n_tokens and hidden:
        bt, bh, nw = config or embedding_config(n_tokens, hidden)
        grid = (_cdiv(n_tokens, bt), _cdiv(hidden, bh))
        _launch(_embedding_kernel, grid, (ids, w, out, n_tokens, hidden, vocab, w.stride(0)),
                {"BLOCK_T": bt, "BLOCK_H": bh, "num_warps": nw})
    return out


def _embedding_op(input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _embedding(input_ids, weight, None)


_EMBEDDING = _register_op("embedding", _embedding_op)


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return embedding(input_ids, self.weight)
