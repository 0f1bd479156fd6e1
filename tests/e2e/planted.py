"""Kernels with planted bugs (and one correct one), as the candidate files an LLM could write.
Each is a plain PyTorch module with the baseline's class name and signature."""

RMS_NORM_HEAD = '''
import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def normed(self, x, eps):
        h = x.to(torch.float32)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
'''

# One output column scaled by 1.05: invisible at the model's output on random weights (the issue's
# H100 measurement: 80% top-1 vs 83% for correct kernels), obvious where the op runs.
RMS_NORM_ONE_COLUMN = RMS_NORM_HEAD + '''
    def forward(self, x):
        out = self.weight * self.normed(x, self.variance_epsilon).to(x.dtype)
        scale = torch.ones(out.shape[-1], dtype=torch.float32, device=out.device)
        scale[3] = 1.05
        return (out.float() * scale).to(x.dtype)
'''

RMS_NORM_WRONG_EPS = RMS_NORM_HEAD + '''
    def forward(self, x):
        return self.weight * self.normed(x, self.variance_epsilon * 100).to(x.dtype)
'''

RMS_NORM_NO_WEIGHT = RMS_NORM_HEAD + '''
    def forward(self, x):
        return self.normed(x, self.variance_epsilon).to(x.dtype)
'''

# Right for the hidden size, wrong for narrow rows (Qwen3's per-head q/k norms over head_dim):
# a bug only some call sites exercise.
RMS_NORM_NARROW_ROWS = RMS_NORM_HEAD + '''
    def forward(self, x):
        out = self.weight * self.normed(x, self.variance_epsilon).to(x.dtype)
        if out.shape[-1] <= 32:
            out = (out.float() * 1.1).to(x.dtype)
        return out
'''

# Token i rotated with the angles of token i-1.
ROTARY_OFF_BY_ONE = '''
import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, q, k, cos, sin):
        cos = torch.roll(cos, 1, dims=1).unsqueeze(1)
        sin = torch.roll(sin, 1, dims=1).unsqueeze(1)

        def rot(x):
            half = x.shape[-1] // 2
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

        return q * cos + rot(q) * sin, k * cos + rot(k) * sin
'''

# Picks the 2nd..(k+1)-th most probable experts instead of the top k.
ROUTER_WRONG_TOPK = '''
import torch
from torch import nn


class MoERouter(nn.Module):
    def __init__(self, num_experts, top_k, norm_topk_prob=True, weights_in_logits_dtype=False):
        super().__init__()
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.weights_in_logits_dtype = weights_in_logits_dtype

    def forward(self, router_logits):
        probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
        weights, indices = torch.topk(probs, self.top_k + 1, dim=-1)
        weights, indices = weights[:, 1:], indices[:, 1:]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.weights_in_logits_dtype:
            weights = weights.to(router_logits.dtype)
        return weights, indices
'''

# Correct on every shape the unit benchmark draws (its decode shape has 2 rows), raises on the
# single-row decode step of a batch-1 generation: it fails only inside the full model.
SILU_RAISES_ON_ONE_ROW = '''
import torch
from torch import nn
from torch.nn import functional as F


class SiluAndMul(nn.Module):
    def forward(self, gate, up):
        if gate.shape[0] == 1:
            raise RuntimeError("block size does not divide the number of rows")
        return F.silu(gate) * up
'''

# Kills its process at the first single-row call (a decode step of a batch-1 generation), the way
# a segfaulting kernel would: nothing is reported, nothing can be caught.
SILU_CRASHES_ON_ONE_ROW = '''
import os

from torch import nn
from torch.nn import functional as F


class SiluAndMul(nn.Module):
    def forward(self, gate, up):
        if gate.shape[0] == 1:
            os._exit(139)
        return F.silu(gate) * up
'''
