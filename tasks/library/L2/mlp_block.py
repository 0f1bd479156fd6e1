"""The gated MLP of a dense decoder layer (HF <Family>MLP, SwiGLU):

    out = down_proj(silu(gate_proj(x)) * up_proj(x))

The three projections are torch GEMMs (F.linear); silu(gate) * up is one Triton pass that reads
gate and up once and writes their product once (eager runs two kernels over five tensors).
Rounding as eager: silu is computed in fp32 and rounded to the input dtype, then the product
rounds again.
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
