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


# fastkernels: include rnd


# fastkernels: include ops


# fastkernels: include mlp
