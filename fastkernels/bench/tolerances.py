"""How close a candidate's output must be to the baseline's: one table, used by the unit benchmark
(per operator, random inputs) and by the end-to-end shadow check (per operator, in the model).

An element passes when |candidate - baseline| <= atol + rtol * |baseline| (torch.testing's rule).
The base figures are per dtype, for a level-1 kernel; a block, a decoder layer and the whole model
chain more roundings (a matmul's accumulation order alone moves a bf16 result by an ulp or two),
so higher levels get a wider band. A task file may set `TOLERANCES = {"bfloat16": (rtol, atol)}`
to override the base figures for its own operator (the reason belongs in a comment beside it).
"""

from __future__ import annotations

# (rtol, atol) per dtype for a level-1 kernel.
#  bfloat16: rtol 1.6e-2 is two ulps of bf16 (8-bit mantissa, ulp 2**-7 relative at worst): a
#            kernel that keeps fp32 where HF rounds to bf16 in between differs by about one ulp.
#            A column scaled by 1.05 exceeds it on every element above 0.3 in magnitude.
#  float16:  same reasoning with an 11-bit mantissa (ulp 2**-10).
#  float32:  reduction order and fast rsqrt/exp differ by a few 1e-7 relative; 1e-4 leaves room for
#            long reductions (attention over thousands of keys) and catches any real bug.
BASE = {
    "bfloat16": (1.6e-2, 1e-2),
    "float16": (2e-3, 1e-3),
    "float32": (1e-4, 1e-5),
}

# Multiplier of the base figures by level: a block is several kernels and matmuls in a row.
LEVEL_SCALE = {1: 1.0, 2: 2.0, 3: 3.0, 4: 5.0}


def dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16 or 'bfloat16'."""
    name = str(dtype)
    return name.split(".", 1)[1] if name.startswith("torch.") else name


def tolerance(dtype, level: int = 1, task=None) -> tuple[float, float]:
    """(rtol, atol) for an operator's output in `dtype` at `level`; `task` (the loaded task module)
    may override the base figures with its TOLERANCES dict."""
    name = dtype_name(dtype)
    overrides = getattr(task, "TOLERANCES", None) or {}
    if name in overrides:
        rtol, atol = overrides[name]
    elif name in BASE:
        rtol, atol = BASE[name]
    else:  # integer outputs (indices) must match exactly
        return 0.0, 0.0
    scale = LEVEL_SCALE.get(int(level), 1.0)
    return rtol * scale, atol * scale
