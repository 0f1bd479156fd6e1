"""Round to nearest even on the bits. A piece shared by the library's level 2-4 kernel files.

A cast done on the bits, so the Triton interpreter (whose casts truncate) rounds as the GPU does.

A library file splices it in where it has the line `# fastkernels: include rnd`, and is served
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
def _rnd(x, dt: tl.constexpr):
    """fp32 x rounded to dtype dt (round to nearest even), returned as fp32. For bf16 the rounding
    is done on the bits, so the Triton interpreter (whose casts truncate) rounds as the GPU does."""
    if dt == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dt).to(tl.float32)
