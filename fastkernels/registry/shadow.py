"""The shadow check: in one patched forward, every patched call also runs its operator's baseline on
clones of the same inputs, and the two outputs are compared where they run, with the acceptance
rule of `fastkernels.rules.tolerance` (the unit benchmark's). The candidate's output flows on, so
the model runs as it would in production. `ShadowCheck.report()` gives max/mean error per operator
and call site, the worst layer, and pass/fail naming the operator and layer of every failure.

`fastkernels.registry.patching` builds the call sites (`Site`) and feeds them here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch

from fastkernels.rules.tolerance import EXACT, Tolerance, acceptance_ratio, bound, rms


@dataclass
class SiteShadow:
    """What the shadow check saw at one call site (one module of one layer)."""

    op: str
    site: str
    layer: int | None
    calls: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0  # mean over calls of each call's mean |candidate - baseline|
    worst_ratio: float = 0.0  # max of |diff| / (atol + rtol |baseline|): passes at <= 1
    passed: bool = True
    failure: str | None = None
    phases: list[str] = field(default_factory=list)


@dataclass
class OpShadow:
    op: str  # "L1/rms_norm"
    passed: bool
    calls: int
    sites: int
    max_abs: float
    mean_abs: float
    worst_site: str | None
    worst_layer: int | None
    worst_ratio: float
    rtol: float
    atol: float
    failures: list[str] = field(default_factory=list)


@dataclass
class ShadowReport:
    passed: bool
    ops: list[OpShadow]
    sites: list[SiteShadow]

    @property
    def failures(self) -> list[str]:
        return [f for op in self.ops for f in op.failures]

    def failing_ops(self) -> list[str]:
        return [op.op for op in self.ops if not op.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failures": self.failures,
                "ops": [asdict(o) for o in self.ops], "sites": [asdict(s) for s in self.sites]}


def _flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


class ShadowCheck:
    """Collects the comparisons of every patched call while `enabled`."""

    def __init__(self) -> None:
        self.enabled = False
        self.phase = "forward"
        self.sites: dict[str, SiteShadow] = {}
        self.tolerances: dict[str, Tolerance] = {}

    def compare(self, site, cand_out, ref_out, mutated: bool, strided: list[int] | None = None,
                reference: Callable | None = None) -> None:
        """Compare one call's outputs; `reference()` gives the baseline's outputs in fp32 (asked for
        only when the flat tolerance is exceeded: see `acceptance_ratio`). `site` is a
        `fastkernels.registry.patching.Site`."""
        refs32: list | None = None
        rec = self.sites.setdefault(site.name + "|" + site.key, SiteShadow(op=site.key, site=site.name, layer=site.layer))
        rec.calls += 1
        if self.phase not in rec.phases:
            rec.phases.append(self.phase)
        if site.normalize is not None:
            try:
                cand_out, ref_out = site.normalize(cand_out), site.normalize(ref_out)
            except Exception as exc:  # noqa: BLE001 - a malformed output is a finding, not a crash
                self._fail(rec, f"its output has the wrong form ({type(exc).__name__}: {exc})")
                return
        cands, refs = _flat(cand_out), _flat(ref_out)
        if len(cands) != len(refs):
            self._fail(rec, f"returned {len(cands)} outputs, the baseline returns {len(refs)}")
            return
        call_mean = 0.0
        for i, (c, r) in enumerate(zip(cands, refs)):
            what = f"output {i}" if len(refs) > 1 else "output"
            if not torch.is_tensor(c) or c.shape != r.shape:
                shape = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
                self._fail(rec, f"{what} has shape {shape}, the baseline's is {tuple(r.shape)}")
                return
            if c.dtype != r.dtype:
                self._fail(rec, f"{what} is {c.dtype}, the baseline's is {r.dtype}")
                return
            tol = self.tolerances.get(site.key, EXACT) if r.is_floating_point() else EXACT
            cf, rf = c.detach().double(), r.detach().double()
            diff = (cf - rf).abs()
            bad_nan = ~torch.isfinite(cf) & torch.isfinite(rf)
            diff = torch.where(torch.isfinite(rf), diff, torch.zeros_like(diff))
            diff = torch.where(bad_nan, torch.full_like(diff, float("inf")), diff)
            finite_ref = rf.nan_to_num(0.0, posinf=0.0, neginf=0.0)
            scale = rms(finite_ref)
            allowed = bound(finite_ref, tol)
            ratio = diff / allowed.clamp_min(1e-30) if tol != EXACT else torch.where(diff > 0, float("inf"), 0.0)
            mx = float(diff.max()) if diff.numel() else 0.0
            rec.max_abs = max(rec.max_abs, mx)
            finite = diff[torch.isfinite(diff)]
            call_mean = max(call_mean, float(finite.mean()) if finite.numel() else 0.0)
            worst = float(ratio.max()) if ratio.numel() else 0.0
            if worst > 1.0 and reference is not None and r.is_floating_point() and not bool(bad_nan.any()):
                if refs32 is None:
                    out32 = reference()
                    refs32 = _flat(site.normalize(out32) if site.normalize is not None else out32)
                floor = acceptance_ratio(cf, rf, refs32[i].detach().double(), tol)
                if floor <= 1.0:
                    worst = floor
            rec.worst_ratio = max(rec.worst_ratio, worst)
            if bool(bad_nan.any()):
                self._fail(rec, f"{what} has NaN/Inf where the baseline is finite ({self.phase})")
            elif worst > 1.0:
                where = tuple(int(i) for i in torch.unravel_index(ratio.flatten().argmax(), ratio.shape))
                layout = (f"; inputs {', '.join(map(str, strided))} are strided views here, not contiguous"
                          if strided else "")
                self._fail(rec, f"{what} off by up to {mx:.3g} (at index {where}; allowed {tol.atol:g} x rms {scale:.3g}"
                                f" + {tol.rtol:g} x |baseline|; {self.phase}{layout})")
        rec.mean_abs += (call_mean - rec.mean_abs) / rec.calls
        if mutated:
            self._fail(rec, f"modified its input in place ({self.phase})")

    @staticmethod
    def _fail(rec: SiteShadow, why: str) -> None:
        rec.passed = False
        if rec.failure is None:
            rec.failure = why

    def report(self, keys: Iterable[str] = ()) -> ShadowReport:
        by_op: dict[str, list[SiteShadow]] = {k: [] for k in keys}
        for rec in self.sites.values():
            by_op.setdefault(rec.op, []).append(rec)
        ops = []
        for key, recs in by_op.items():
            tol = self.tolerances.get(key, EXACT)
            called = [r for r in recs if r.calls]
            worst = max(called, key=lambda r: (not r.passed, r.worst_ratio), default=None)
            failures = [f"{key} at {r.site}" + (f" (layer {r.layer})" if r.layer is not None else "") + f": {r.failure}"
                        for r in recs if not r.passed]
            ops.append(OpShadow(
                op=key, passed=not failures, calls=sum(r.calls for r in recs), sites=len(called),
                max_abs=max((r.max_abs for r in called), default=0.0),
                mean_abs=sum(r.mean_abs for r in called) / len(called) if called else 0.0,
                worst_site=worst.site if worst else None, worst_layer=worst.layer if worst else None,
                worst_ratio=worst.worst_ratio if worst else 0.0, rtol=tol.rtol, atol=tol.atol, failures=failures))
        sites = sorted(self.sites.values(), key=lambda r: (r.op, r.layer if r.layer is not None else -1, r.site))
        return ShadowReport(passed=all(o.passed for o in ops), ops=ops, sites=sites)
