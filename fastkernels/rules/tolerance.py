"""The acceptance rule for a kernel's output, defined once: the unit benchmark, the gate and the
end-to-end shadow check all judge with it.

An element passes when |candidate - reference| <= atol * rms(reference) + rtol * |reference|,
against the baseline run in fp32; atol is in units of the output's RMS, so a near-zero output cannot
be matched by zeros. Deep blocks (a decoder layer, a whole model) accumulate more rounding than one
kernel, so an output that misses that bound still passes when its error against the fp32 reference
is no more than twice the baseline's own (the baseline run in the kernel's dtype), at the worst
element and in RMS: as faithful as the baseline itself.

Functions take tensors and use only their methods: importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """|candidate - reference| <= atol * rms(reference) + rtol * |reference|, element-wise."""

    atol: float
    rtol: float


# What "close enough" means per dtype. bf16 keeps 8 significant bits: one rounding is up to
# 2**-9 = 0.2% relative, and the baseline itself rounds two or three times in between (RMSNorm: the
# normalised value, then the weight product), so 2% leaves room for a fused kernel that rounds
# differently, while an off-by-one-element or a wrong epsilon on small inputs is 10x-100x outside.
# fp16 keeps 11 bits (8x finer). fp32 differs only by summation order: ~1e-6.
TOLERANCES = {
    "bfloat16": Tolerance(atol=2e-2, rtol=2e-2),
    "float16": Tolerance(atol=4e-3, rtol=4e-3),
    "float32": Tolerance(atol=1e-4, rtol=1e-4),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)  # integer outputs, and dtypes with no entry above
BASELINE_ERROR_FACTOR = 2.0  # "no worse than twice the baseline's own error"


def tolerance_for(dtype) -> Tolerance:
    """The tolerance of outputs of `dtype` (a torch.dtype or its name)."""
    return TOLERANCES.get(str(dtype).replace("torch.", ""), EXACT)


def rms(t) -> float:
    return float(t.pow(2).mean().sqrt()) if t.numel() else 0.0


def bound(ref, tol: Tolerance):
    """The allowed absolute error of each element of `ref` (a float tensor)."""
    return tol.atol * rms(ref) + tol.rtol * ref.abs()


def flat_ratio(cand, ref, tol: Tolerance) -> float:
    """max |cand - ref| / bound: <= 1 passes the flat rule."""
    if not cand.numel():
        return 0.0
    return float(((cand - ref).abs() / bound(ref, tol).clamp_min(1e-30)).max())


def baseline_ratio(cand, base, ref32) -> float:
    """The candidate's error against `ref32` over BASELINE_ERROR_FACTOR x the baseline's own, the
    larger of the worst-element and the RMS ratios: <= 1 passes. inf where the baseline's error is
    not finite (no floor to lean on)."""
    err, base_err = (cand - ref32).abs(), (base - ref32).abs()
    if not err.numel() or not bool(base_err.isfinite().all()):
        return float("inf")
    worst = float(err.max()) / max(BASELINE_ERROR_FACTOR * float(base_err.max()), 1e-30)
    spread = rms(err) / max(BASELINE_ERROR_FACTOR * rms(base_err), 1e-30)
    return max(worst, spread)


def acceptance_ratio(cand, base, ref32, tol: Tolerance) -> float:
    """The rule as one number (<= 1 passes): within the flat tolerance of the fp32 reference, or no
    worse than twice the baseline's own error. All three are float tensors of one shape."""
    return min(flat_ratio(cand, ref32, tol), baseline_ratio(cand, base, ref32))
