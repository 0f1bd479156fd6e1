"""Build a model of the catalog: real weights when they are on disk, otherwise seeded random
weights for every parameter (norm weights too: transformers initialises those to ones, which would
hide a kernel that ignores them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastkernels.errors import ResourceError
from fastkernels.models.catalog import ModelEntry

# Headroom over the weights for activations, KV cache and the allocator.
MEMORY_HEADROOM = 1.25


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: torch.nn.Module
    weights: str  # "real weights from <path>" or "seeded random weights (seed=N)"
    dtype: torch.dtype
    device: torch.device

    @property
    def config(self):
        return self.model.config


def _weights_on_disk(entry: ModelEntry) -> Path | None:
    if entry.tiny:
        return None
    local = Path(entry.model_id).expanduser()
    if local.is_dir() and any(local.glob("*.safetensors")):
        return local
    try:
        from huggingface_hub import (
            scan_cache_dir,  # noqa: F401  (cache layout helpers)
            try_to_load_from_cache,
        )

        for name in ("model.safetensors.index.json", "model.safetensors"):
            hit = try_to_load_from_cache(entry.model_id, name)
            if isinstance(hit, str):
                return Path(hit).parent
    except Exception:
        return None
    return None


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(entry: ModelEntry, dtype: torch.dtype, device: torch.device) -> None:
    need = int(entry.param_count() * torch.empty((), dtype=dtype).element_size() * MEMORY_HEADROOM)
    have = available_memory(device)
    if need > have:
        raise ResourceError(
            f"{entry.model_id} needs about {need / 2**30:.1f} GiB on {device.type} in {dtype} "
            f"but only {have / 2**30:.1f} GiB is free; use --tiny for the same architecture shrunk"
        )


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Seeded random values for every parameter, drawn on the parameters' own device (drawing
    8B values on the CPU and copying them over took 79 s on an H100 host). 1-D weights of norms get
    1 + U(-0.5, 0.5) so a kernel that drops them or swaps them for ones is visible; biases and
    matrices N(0, std). The same seed gives the same weights on the same device type."""
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in model.named_parameters():
        gen = gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
        if p.ndim == 1 and "norm" in name:
            p.uniform_(0.5, 1.5, generator=gen)
        else:
            p.normal_(0.0, std, generator=gen)


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally, only slower
        from contextlib import nullcontext

        return nullcontext()
    return no_init_weights()


def load_model(
    entry: ModelEntry,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    check_fits(entry, dtype, device)
    on_disk = _weights_on_disk(entry)
    if on_disk is not None:
        model = AutoModelForCausalLM.from_pretrained(
            on_disk, dtype=dtype, local_files_only=True, attn_implementation="eager"
        ).to(device)
        weights = f"real weights from {on_disk}"
    else:
        cfg = entry.hf_config()
        # Every parameter is overwritten below: skip transformers' own init (most of the build time).
        with torch.device(device), _no_init_weights():
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="eager")
        randomize_weights(model, seed)
        weights = f"seeded random weights (seed={seed})"
    model.eval()
    return LoadedModel(entry=entry, model=model, weights=weights, dtype=dtype, device=device)
