"""The Triton interpreter (TRITON_INTERPRET=1, how the CPU runs the project's kernels) rounding
floats as a GPU does.

Triton 3.x's interpreter converts fp32 to bf16 by dropping the low 16 bits (round toward zero; its
"round to nearest" rounds halves up), where the GPU rounds to nearest even. A correct kernel then
carries a one-sided error of up to one bf16 step on half its elements: 2-3x the RMS error of the
same kernel on a GPU, which a rule measured against the baseline's own rounding error (the unit
benchmark's) rightly rejects. `round_like_gpu()` makes the interpreter's fp32 -> bf16 conversions
round to nearest even, through torch's own conversion; call it before the kernels run. Nothing
changes without the interpreter.
"""

from __future__ import annotations

import os

_INSTALLED = False


def round_like_gpu() -> bool:
    """Install the rounding fix once (True when the interpreter is in use and now rounds like a GPU)."""
    global _INSTALLED
    if _INSTALLED:
        return True
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import numpy as np
        import torch
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    builder = getattr(interpreter, "InterpreterBuilder", None)
    handle = getattr(interpreter, "TensorHandle", None)
    if builder is None or handle is None or not hasattr(builder, "cast_impl"):
        return False

    def to_bf16(src):
        data = np.ascontiguousarray(src.data, dtype=np.float32)
        bits = torch.from_numpy(data).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return handle(bits.reshape(data.shape), tl.bfloat16)

    def wraps(original):
        def patched(self, src, dst_type, *rest):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                return to_bf16(src)
            return original(self, src, dst_type, *rest)

        return patched

    builder.cast_impl = wraps(builder.cast_impl)
    if hasattr(builder, "create_fp_to_fp"):
        builder.create_fp_to_fp = wraps(builder.create_fp_to_fp)
    _INSTALLED = True
    return True
