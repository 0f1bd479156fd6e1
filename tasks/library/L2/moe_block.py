"""The sparse mixture-of-experts block (HF <Family>SparseMoeBlock), with the memory-bound parts in
Triton and the expert GEMMs in torch:

    logits  = gate(x)                            torch GEMM, [T, E]
    w, idx  = route(logits)                      Triton: fp32 softmax, top-k, renormalise; one
                                                 program per token, the E logits in registers
    grouped = the (token, pick) pairs sorted by expert (one host sync for the group sizes)
    y_e     = down_e(silu(gate_e(x)) * up_e(x))  per expert with tokens: torch GEMMs over its rows,
                                                 silu-and-mul in Triton
    out[t]  = sum over t's picks of w * y        Triton: one program per token gathers its K rows

Rounding as the baseline: the routing weights stay fp32 (Mixtral) or are rounded to the
activations' dtype (Qwen3-MoE); each weighted expert output is rounded to the activations' dtype,
and the picks are summed in ascending expert order, rounding after each add, as the baseline's
expert loop does. Within an expert the rows are in the baseline's order (by pick rank, then
token), so the GEMMs see the same rows in the same places.
"""

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F


# fastkernels: include rnd


# fastkernels: include ops


# fastkernels: include moe
