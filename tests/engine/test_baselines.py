"""Every baseline computes exactly what the HF module it stands for computes, for every family that
uses it (tiny configs, several seeds, every named shape)."""

import pytest
import torch

from fastkernels.models.catalog import known_models, resolve
from fastkernels.registry import LEVELS, build_spec, load_task, task_names
from fastkernels.registry.bindings import HF_REFERENCES
from fastkernels.registry.tasks import build_baseline, build_inputs

# One catalog model per family (the first one the catalog lists).
MODEL_OF_FAMILY = {}
for _m in known_models():
    MODEL_OF_FAMILY.setdefault(resolve(_m).family, _m)

CASES = [
    (level, op, family)
    for level in LEVELS
    for op in task_names(level)
    for family in load_task(level, op).FAMILIES
]


def _flat(out):
    """Outputs as a flat list of tensors (L4 returns lists of per-layer keys/values)."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


@pytest.mark.parametrize("level,op,family", CASES, ids=[f"L{l}-{o}-{f}" for l, o, f in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baseline_matches_hf(level, op, family, seed):
    assert op in HF_REFERENCES, f"no HF reference registered for {op}"
    spec = build_spec(level, op, MODEL_OF_FAMILY[family], tiny=True)
    config = resolve(spec.model_id, tiny=True).hf_config()
    for shape in spec.shapes:
        base = build_baseline(spec, shape, torch.float32, "cpu", seed=seed)
        inputs = build_inputs(spec, shape, torch.float32, "cpu", seed=100 + seed)
        with torch.no_grad():
            ours = _flat(base(*[t.clone() if torch.is_tensor(t) else t for t in inputs]))
            theirs = _flat(HF_REFERENCES[op](config, family, base, inputs))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and a.dtype == b.dtype, (shape, a.shape, b.shape, a.dtype, b.dtype)
            assert a.abs().max() > 0, f"{op}/{shape}: all-zero output proves nothing"
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{op} {family} {shape}")


def test_every_level_has_tasks():
    for level in LEVELS:
        assert task_names(level), f"no task files at level {level}"
