"""The agent: discover the operators of a model, generate kernels for them, validate, benchmark.

This module keeps the seed's public names (`discover_operators`, ...)."""

from __future__ import annotations

from fastkernels.registry.tasks import OperatorSpec, Workload, discover


def discover_operators(model: str, level, tiny: bool = False, workload: Workload | None = None) -> list[OperatorSpec]:
    """The operators of `model` (a catalog id, a cached HF id or a local path) at `level` (1-4)."""
    return discover(model, level, tiny=tiny, workload=workload)
