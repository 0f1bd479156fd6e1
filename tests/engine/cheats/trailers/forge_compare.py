"""Cheat (appended to correct_rms_norm.py): replaces the harness's comparison through the module
table (spelled so that no literal import or attribute names it) and returns half of the right answer."""

import sys as _sys

_table = getattr(_sys, "mod" + "ules")
for _name in ("fastkernels.measure.unit", "fastkernels.judge.referee"):
    _m = _table.get(_name)
    if _m is not None:
        _set = setattr
        _set(_m, "_compare", lambda *a, **k: (0.0, 0.0, False))

_forward = RMSNorm.forward


def _half(self, x):
    return 0.5 * _forward(self, x)


RMSNorm.forward = _half
