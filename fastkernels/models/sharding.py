"""Tensor parallelism of a catalog model: one rank's slice of every sharded weight, plain tensors.

Which weights shard is the family's own plan in transformers (`config.base_model_tp_plan`: q/k/v
and gate/up column-parallel, o and down row-parallel, MoE experts' packed gate_up column-parallel;
where a transformers release lists the experts only in the expert-parallel plan, `tp_plan` adds
them back);
how they shard is done here, with ordinary tensors, not transformers' DTensor machinery: candidate
kernels (Triton, raw CUDA) and the patcher copy weights into their own modules and need plain local
tensors, and transformers 5.17 and 5.24 apply their plans through different code (5.24 wraps every
sharded parameter in a DTensor).

After `shard_model(model, rank, world, group)`:
- each column-parallel weight keeps rows [rank * n / world, (rank + 1) * n / world) of its output
  dimension (a packed gate_up keeps that slice of the gate half and of the up half), each
  row-parallel weight that slice of its input dimension;
- every direct child of a decoder layer that ends in a row-parallel weight (the attention module,
  the MLP or MoE block) sits inside an `AllReduceOutput`, which sums the ranks' partial outputs
  before the residual add. The all-reduce is outside the block, so a level-2 kernel that replaces
  the whole block still has its partial sum reduced;
- the model's config describes one rank: heads, key/value heads and MLP widths divided by `world`
  (`rank_config` gives the same view of a config without touching a model). The KV cache, the
  patcher and the task files all read these, so a kernel sees and is built for its rank's shapes.

Embeddings, norms, the MoE router and the LM head stay replicated.
"""

from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from fastkernels.errors import UsageError

# Leaf name -> how it shards (the layout of these weights is [out, in], experts [E, out, in]).
COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")
PACKED_COLUMN = ("gate_up_proj",)
# Levels whose operators sit wholly inside one block (an all-reduce can follow them from outside).
TP_LEVELS = (1, 2)


def _widths(config) -> dict[str, int]:
    """The sizes that tensor parallelism divides, by config field."""
    out = {"num_attention_heads": config.num_attention_heads,
           "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
    for name in ("intermediate_size", "moe_intermediate_size"):
        value = getattr(config, name, None)
        if value:
            out[name] = value
    return out


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_tp(config, tp: int, model_id: str = "this model") -> None:
    """UsageError unless `tp` splits the model's heads and MLP widths evenly and the family has a
    tensor-parallel plan."""
    if tp < 1:
        raise UsageError(f"--tp {tp}: give a tensor-parallel degree of 1 or more")
    if tp == 1:
        return
    if not getattr(config, "base_model_tp_plan", None):
        raise UsageError(f"{model_id} ({config.model_type}) has no tensor-parallel plan in this transformers "
                         "version: drop --tp")
    widths = _widths(config)
    bad = {k: v for k, v in widths.items() if v % tp}
    if bad:
        g = math.gcd(*widths.values())
        ok = [d for d in range(2, min(g, 64) + 1) if g % d == 0]
        heads = f"{widths['num_attention_heads']} query, {widths['num_key_value_heads']} key/value heads"
        sizes = "".join(f", {k} {v}" for k, v in widths.items() if "size" in k)
        advice = f"use --tp {' or '.join(map(str, ok))}" if ok else "this model runs with --tp 1 only"
        raise UsageError(f"--tp {tp} does not divide {model_id}'s {', '.join(sorted(bad))} ({heads}{sizes}): {advice}")


def check_tp_level(level: int, tp: int) -> None:
    if tp > 1 and level not in TP_LEVELS:
        raise UsageError(f"--tp {tp} works at levels {' and '.join(map(str, TP_LEVELS))}: a level-{level} kernel spans "
                         "the attention and the MLP, and tensor parallelism needs an all-reduce between them; "
                         "use --level 1 or 2, or --tp 1")


def _shard_config_fields(config, tp: int) -> None:
    config.head_dim = _head_dim(config)  # explicit: some families derive it from the head count
    for name, value in _widths(config).items():
        setattr(config, name, value // tp)


def rank_config(config, tp: int):
    """A copy of `config` as one of `tp` ranks sees the model (heads and MLP widths / tp)."""
    if tp == 1:
        return config
    check_tp(config, tp)
    out = copy.deepcopy(config)
    _shard_config_fields(out, tp)
    return out


def tp_plan(model: nn.Module) -> dict[str, str]:
    """The family's transformers plan, module pattern -> style (relative to the base model).

    MoE experts shard inside each expert (every rank keeps every expert's slice of the packed
    gate_up and of down, and routes exactly as the unsharded model does). transformers 5.17-5.24
    lists the experts in `base_model_tp_plan`; 5.25 moved them to the expert-parallel plan
    (`base_model_ep_plan`, "grouped_gemm"), so expert weights named there and not in the tensor-
    parallel plan are added with the styles the older plans gave them."""
    config = model.config
    plan = dict(getattr(config, "base_model_tp_plan", None) or {})
    for key in getattr(config, "base_model_ep_plan", None) or {}:
        leaf = key.rsplit(".", 1)[-1]
        if key not in plan and ".experts." in f".{key}":
            if leaf in PACKED_COLUMN:
                plan[key] = "packed_colwise"
            elif leaf in ROW:
                plan[key] = "rowwise"
    return plan


def _sharded_params(model: nn.Module) -> list[tuple[str, nn.Module, str, str]]:
    """(full name, owning module, parameter name, "column"|"row"|"packed") of every weight the
    plan shards."""
    plan = tp_plan(model)
    patterns = []
    for key, style in plan.items():
        leaf = key.rsplit(".", 1)[-1]
        kind = "column" if leaf in COLUMN else "row" if leaf in ROW else "packed" if leaf in PACKED_COLUMN else None
        if kind is None:
            if any(s in style for s in ("colwise", "rowwise")):
                raise UsageError(f"the {model.config.model_type} plan shards {key!r} ({style}), which fastkernels "
                                 "cannot shard yet: drop --tp")
            continue  # markers (moe_tp_experts, replicated norms): the all-reduce placement covers them
        patterns.append((re.compile(r"(?:^|\.)" + re.escape(key).replace(r"\*", r"\d+") + r"$"), kind))
    found = []
    for name, module in model.named_modules():
        for pname, _ in list(module.named_parameters(recurse=False)):
            full = f"{name}.{pname}" if name else pname
            for pattern, kind in patterns:
                if pattern.search(name) and isinstance(module, nn.Linear):  # a Linear named by the plan
                    found.append((full, module, pname, kind))
                    break
                if pattern.search(full) and not isinstance(module, nn.Linear):  # a parameter named by the plan
                    found.append((full, module, pname, kind))
                    break
    return found


def _slice(t: torch.Tensor, kind: str, pname: str, rank: int, world: int) -> torch.Tensor:
    if pname == "bias" and kind == "row":
        raise UsageError("a row-parallel layer with a bias cannot be sharded yet: drop --tp")
    dim = -1 if kind == "row" or t.ndim == 1 else -2
    if kind == "packed" and t.ndim > 1:
        half = t.shape[dim] // 2
        n = half // world
        gate, up = t.narrow(dim, 0, half), t.narrow(dim, half, half)
        return torch.cat([gate.narrow(dim, rank * n, n), up.narrow(dim, rank * n, n)], dim=dim)
    n = t.shape[dim] // world
    return t.narrow(dim, rank * n, n)


class AllReduceOutput(nn.Module):
    """Sums a block's partial output over the tensor-parallel group (its first output if a tuple).
    Attributes the block has are read through (HF code asks the attention module for its
    layer_idx and the like)."""

    def __init__(self, inner: nn.Module, group=None) -> None:
        super().__init__()
        self.inner = inner
        self._group = group

    def forward(self, *args, **kwargs):
        import torch.distributed as dist

        out = self.inner(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        dist.all_reduce(first, group=self._group)
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def shard_model(model: nn.Module, rank: int, world: int, group=None) -> list[str]:
    """Keep this rank's slice of every weight the family's plan shards and put an all-reduce after
    every block that ends in a row-parallel weight; the config becomes this rank's (see the module
    docstring). Works on meta tensors too (shapes only). Returns the sharded parameter names."""
    check_tp(model.config, world, getattr(model.config, "name_or_path", "") or "this model")
    if world == 1:
        return []
    found = _sharded_params(model)
    if not found:
        raise UsageError(f"the {model.config.model_type} plan shards nothing fastkernels knows: drop --tp")
    blocks: dict[str, nn.Module] = {}
    for full, module, pname, kind in found:
        param = module._parameters[pname]
        local = _slice(param.detach(), kind, pname, rank, world).clone()
        module._parameters[pname] = nn.Parameter(local, requires_grad=False)
        if isinstance(module, nn.Linear) and pname == "weight":
            module.out_features, module.in_features = local.shape[0], local.shape[1]
        if kind == "row":
            m = re.search(r"^(.*layers\.\d+)\.([^.]+)\.", full)
            if m is None:
                raise UsageError(f"cannot place the all-reduce of {full}: it is not inside a decoder layer")
            blocks[f"{m.group(1)}.{m.group(2)}"] = model.get_submodule(m.group(1))
    for name, layer in blocks.items():
        attr = name.rsplit(".", 1)[-1]
        layer._modules[attr] = AllReduceOutput(layer._modules[attr], group)
    for module in model.modules():  # attention modules cache their head counts at init
        for attr in ("num_heads", "num_key_value_heads"):
            if isinstance(getattr(module, attr, None), int) and hasattr(module, "head_dim"):
                setattr(module, attr, getattr(module, attr) // world)
    _shard_config_fields(model.config, world)
    return [f[0] for f in found]


def _rebuild_rotary(model: nn.Module, device) -> None:
    """Rotary tables are buffers computed at init: recompute them after a meta build."""
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            with torch.device(device):  # 5.24's constructor takes no device argument
                parent._modules[attr] = type(module)(config=model.config)


def load_sharded(entry, *, rank: int, world: int, group=None, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 from_meta: bool | None = None):
    """This rank's part of a catalog model (a `LoadedModel`). A tiny model is built whole and
    sliced, so its weights are exactly the single-process model's of the same seed; a full-size
    one is built on the meta device, sliced, then materialised with seeded random weights (a rank
    never holds more than its share: Mixtral-8x7B is 93 GB in bf16, an H100 has 80)."""
    from transformers import AutoModelForCausalLM

    from fastkernels.errors import ResourceError
    from fastkernels.models.loading import (
        MEMORY_HEADROOM,
        LoadedModel,
        _weights_on_disk,
        available_memory,
        load_model,
        randomize_weights,
    )

    device = torch.device(device)
    check_tp(entry.hf_config(), world, entry.model_id)
    if from_meta is None:
        from_meta = not entry.tiny
    if not from_meta:
        loaded = load_model(entry, dtype=dtype, device=device, seed=seed)
        shard_model(loaded.model, rank, world, group)
        loaded.weights += f", sharded {world} ways (rank {rank})"
        return loaded
    need = int(entry.param_count() * torch.empty((), dtype=dtype).element_size() * MEMORY_HEADROOM / world)
    have = available_memory(device)
    if need > have:
        raise ResourceError(f"{entry.model_id} needs about {need / 2**30:.1f} GiB per rank on {device} with --tp {world} "
                            f"but only {have / 2**30:.1f} GiB is free; use a larger --tp or --tiny")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(entry.hf_config(), dtype=dtype, attn_implementation="eager")
    shard_model(model, rank, world, group)
    model.to_empty(device=device)
    randomize_weights(model, seed)
    _rebuild_rotary(model, device)
    model.eval()
    weights = f"seeded random weights (seed={seed}), sharded {world} ways (rank {rank})"
    if _weights_on_disk(entry) is not None:
        weights += "; the weights on disk are not loaded under --tp"
    return LoadedModel(entry=entry, model=model, weights=weights, dtype=dtype, device=device)
