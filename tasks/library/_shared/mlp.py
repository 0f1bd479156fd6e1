"""The dense MLP. A piece shared by the library's level 2-4 kernel files.

GEMMs in torch, silu-and-mul in one Triton pass.

It calls what the rnd and ops pieces define: a file that includes it includes
them first.

A library file splices it in where it has the line `# fastkernels: include mlp`, and is served
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
    if torch.compiler.is_compiling():
        return _SILU_AND_MUL(gate, up)
    return _silu_and_mul(gate, up)


def _silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        block = 1024
        _run(_silu_and_mul_kernel, (triton.cdiv(n, block),), (gate, up, out, n), {"BLOCK": block, "num_warps": 4})
    return out


_SILU_AND_MUL = _register_op("silu_and_mul", _silu_and_mul)


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
