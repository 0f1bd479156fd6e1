"""Correct, but its launch is a raw Triton call, not a PyTorch operator: torch.compile(fullgraph=True)
breaks on it, so a model it goes into cannot be compiled."""

import torch
import triton
import triton.language as tl
from torch import nn


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, out_ptr, n_cols, eps: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    h = x * (1.0 / tl.sqrt(var + eps))
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # round to the input dtype before the weight multiply, as the baseline does
    y = w * h.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x, weight, eps):
    x = x.contiguous()
    out = torch.empty_like(x)
    rows, cols = x.shape
    _rms_norm_row[(rows,)](x, weight, out, cols, eps, BLOCK=triton.next_power_of_2(cols))
    return out


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)
