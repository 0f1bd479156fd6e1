"""How each operator maps onto the Hugging Face modules of each family.

`HF_REFERENCES[op](config, family, baseline, inputs)` runs the HF module or function that the
baseline stands for, on the same weights (state-dict names match HF's) and the same inputs, and
returns its output in the baseline's convention. The baseline-vs-HF tests use it to prove every
baseline computes exactly what the model computes.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch


def hf_module(family: str):
    """transformers.models.<family>.modeling_<family>."""
    return importlib.import_module(f"transformers.models.{family}.modeling_{family}")


def hf_attr(family: str, name: str):
    return getattr(hf_module(family), name)


def _with_weights(hf: torch.nn.Module, baseline: torch.nn.Module) -> torch.nn.Module:
    missing, unexpected = hf.load_state_dict(baseline.state_dict(), strict=True), None
    del missing, unexpected
    return hf.to(next(baseline.parameters()).device).to(next(baseline.parameters()).dtype)


HFReference = Callable[[object, str, torch.nn.Module, tuple], object]
HF_REFERENCES: dict[str, HFReference] = {}


def reference(op: str):
    def register(fn: HFReference) -> HFReference:
        HF_REFERENCES[op] = fn
        return fn

    return register


@reference("rms_norm")
def _rms_norm(config, family, baseline, inputs):
    from fastkernels.registry.tasks import load_task

    cls = hf_attr(family, load_task(1, "rms_norm").FAMILIES[family])
    hf = _with_weights(cls(baseline.weight.shape[0], eps=baseline.variance_epsilon), baseline)
    return hf(*inputs)


@reference("silu_and_mul")
def _silu_and_mul(config, family, baseline, inputs):
    from transformers.activations import ACT2FN

    gate, up = inputs
    return ACT2FN[config.hidden_act](gate) * up


from fastkernels.registry import bindings_blocks  # noqa: E402,F401  (registers the L2-L4 references)
