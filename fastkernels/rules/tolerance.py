"""The acceptance rules for a kernel's output, defined once.

The unit benchmark and the gate judge a kernel against the baseline's own rounding error (the noise
floor: the baseline run in the kernel's dtype against the baseline in fp32, on the same inputs and
weights). With e = candidate - fp32 reference and b = baseline - fp32 reference, an output passes when
- max |e| <= NOISE_MAX x max |b|   (no element worse than a few of the baseline's worst),
- rms(e) <= NOISE_RMS x rms(b)     (no worse overall: a scaled output, a bias, a sum kept in bf16
                                    raise the RMS error by 5-10x while every element stays within 2%),
- |mean(e)| <= BIAS x (|mean(b)| + rms(b)/sqrt(n)) + BIAS_RMS x rms(b)   (no systematic shift),
with floors of FLOORS[dtype] x (rms(reference) + |reference|) per element and FLOORS[dtype] x
rms(reference) in RMS (for fp32 outputs, where the baseline is the reference, and outputs the
baseline computes exactly). `noise_verdict` applies it.

The end-to-end shadow check keeps the flat rule below: an element passes when |candidate - reference| <= atol * rms(reference) + rtol * |reference|,
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


NOISE_MAX = 4.0
NOISE_RMS = 2.5
BIAS = 4.0
BIAS_RMS = 0.25
# The floor of every bound, in units of the reference's RMS: about one rounding of the dtype (bf16
# keeps 8 significant bits), fp32's summation-order differences.
FLOORS = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 1e-4}


def noise_verdict(cand, base, ref32, dtype) -> tuple[object, str]:
    """Judge `cand` (float tensor) against the fp32 reference `ref32` with the baseline `base` (in
    the candidate's dtype, as float) as the noise floor. Returns (the allowed error of each element,
    "" when it passes or why not: "max", or "rms: ..." / "bias: ..." with the figures). Outputs
    whose baseline error is not finite fall back to the flat tolerance."""
    name = str(dtype).replace("torch.", "")
    scale = rms(ref32)
    floor = FLOORS.get(name, 0.0) * scale
    err, base_err = cand - ref32, base - ref32
    n = max(err.numel(), 1)
    if not bool(base_err.isfinite().all()):
        allowed = bound(ref32, tolerance_for(name))
        return allowed, ("max" if bool((err.abs() > allowed).any()) else "")
    b_max, b_rms, b_mean = float(base_err.abs().max()), rms(base_err), abs(float(base_err.mean()))
    allowed = (floor * (1.0 + ref32.abs() / max(scale, 1e-30))).clamp_min(NOISE_MAX * b_max)
    if bool((err.abs() > allowed).any()):
        return allowed, "max"
    e_rms, e_mean = rms(err), float(err.mean())
    allowed_rms = max(NOISE_RMS * b_rms, floor)
    if e_rms > allowed_rms:
        return allowed, (f"rms: RMS error {e_rms:.3g} is {e_rms / max(b_rms, 1e-30):.1f}x the baseline's own "
                         f"{name} error {b_rms:.3g} against fp32 (allowed {NOISE_RMS}x)")
    allowed_bias = BIAS * (b_mean + b_rms / n**0.5) + BIAS_RMS * b_rms + floor / n**0.5
    if abs(e_mean) > allowed_bias:
        return allowed, (f"bias: mean error {e_mean:.3g} ({100 * e_mean / max(scale, 1e-30):.2f}% of the output's "
                         f"RMS; the baseline's own is {b_mean:.3g}, allowed {allowed_bias:.3g})")
    return allowed, ""


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
