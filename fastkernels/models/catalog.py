"""The model catalog: which models fastkernels knows, their configs (bundled, so nothing needs the
network), their tiny variants, and where their weights are if any are on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastkernels.errors import ResourceError, UsageError
from fastkernels.models.hf import FAMILY_PREFIX

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # what --model names when none is given

# Families whose HF implementation fastkernels binds to (model_type -> family name used by tasks).
SUPPORTED_FAMILIES = tuple(FAMILY_PREFIX)
MOE_FAMILIES = ("mixtral", "qwen3_moe")

# The tiny variant keeps the architecture (GQA ratio, rope type, MoE routing, qk-norm, biases) and
# shrinks every size so that the whole pipeline runs on a CPU in seconds.
TINY_OVERRIDES = dict(
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    max_position_embeddings=512,
    max_window_layers=2,
    num_local_experts=4,
    num_experts=4,
    num_experts_per_tok=2,
)


@dataclass(frozen=True)
class ModelEntry:
    """One model the catalog can build: its id, its family and its (possibly tiny) HF config."""

    model_id: str
    family: str
    tiny: bool
    config_dict: dict
    source: str  # "bundled" or the path of the cached config.json it came from

    @property
    def display_name(self) -> str:
        return f"{self.model_id} (tiny)" if self.tiny else self.model_id

    def hf_config(self):
        """A fresh transformers config object (callers may mutate it)."""
        from transformers import AutoConfig

        cfg = AutoConfig.for_model(**self.config_dict)
        # Eager attention is what the task baselines reproduce exactly; it is also what runs on a
        # CPU without surprises. Kernels replace it, the baseline timing uses SDPA separately.
        cfg._attn_implementation = "eager"
        return cfg

    def param_count(self) -> int:
        return estimate_params(self.config_dict)


def _bundled_ids() -> dict[str, Path]:
    return {p.stem.replace("__", "/"): p for p in sorted(CONFIG_DIR.glob("*.json"))}


def known_models() -> list[str]:
    return list(_bundled_ids())


def _cached_config(model_id: str) -> Path | None:
    """config.json of a model id from a local path or the local HF cache, never the network."""
    local = Path(model_id).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # an id that is not a valid repo name is simply not cached
        return None
    return Path(hit) if isinstance(hit, str) else None


@lru_cache(maxsize=64)
def resolve(model_id: str, tiny: bool = False) -> ModelEntry:
    """Find a model by id: bundled catalog first, then a local path or the local HF cache."""
    bundled = _bundled_ids()
    if model_id in bundled:
        cfg = json.loads(bundled[model_id].read_text())
        source = "bundled"
    else:
        cached = _cached_config(model_id)
        if cached is None:
            raise UsageError(
                f"unknown model {model_id!r}: not in the catalog and no config.json for it on disk. "
                f"Known models: {', '.join(bundled)}"
            )
        cfg = json.loads(cached.read_text())
        cfg = cfg.get("text_config", cfg) if cfg.get("model_type") not in SUPPORTED_FAMILIES else cfg
        source = str(cached)
    family = cfg.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise UsageError(
            f"model {model_id!r} is a {family!r} model; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    if tiny:
        heads = cfg["num_attention_heads"]
        group = heads // (cfg.get("num_key_value_heads") or heads)
        cfg = {**cfg, **{k: v for k, v in TINY_OVERRIDES.items() if k in cfg or k in ("head_dim",)}}
        # Keep the grouped-query ratio (Llama-3.1-8B 32:8, Qwen2.5-7B 28:4, Qwen3-30B-A3B 32:4): a
        # kernel that maps query heads to the wrong KV head only shows with the real grouping.
        cfg["num_key_value_heads"] = TINY_OVERRIDES["num_key_value_heads"]
        cfg["num_attention_heads"] = cfg["num_key_value_heads"] * group
        if family == "qwen2":  # Qwen2 derives head_dim from hidden_size / heads
            cfg.pop("head_dim", None)
            cfg["hidden_size"] = cfg["num_attention_heads"] * TINY_OVERRIDES["head_dim"]
        cfg["bos_token_id"], cfg["eos_token_id"] = 1, 2  # inside the tiny vocabulary
        if cfg.get("rope_scaling"):
            cfg["rope_scaling"] = {**cfg["rope_scaling"], "original_max_position_embeddings": 256}
        if cfg.get("sliding_window") and cfg.get("use_sliding_window", True):
            cfg["sliding_window"] = cfg["max_position_embeddings"]
    return ModelEntry(model_id=model_id, family=family, tiny=tiny, config_dict=cfg, source=source)


def estimate_params(cfg: dict) -> int:
    """Parameter count from the config alone (used to refuse a model that cannot fit)."""
    h = cfg["hidden_size"]
    layers = cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or h // heads
    vocab = cfg["vocab_size"]
    attn = h * hd * (heads + 2 * kv) + heads * hd * h
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if experts:
        inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
        mlp = experts * 3 * h * inter + experts * h
    else:
        mlp = 3 * h * cfg["intermediate_size"]
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * (attn + mlp + 2 * h) + embed + h


# What an end-to-end run on a machine without a GPU holds (fastkernels.measure.e2e_child): the bf16
# weights and, for the noise floor, every parameter cast to fp32 at once (the layer-at-a-time cast
# is for a GPU short of memory): 2 + 4 bytes a parameter. Llama-3.1-8B (8.0e9 parameters) needs
# 45 GiB that way; on a 24 GB machine the OOM killer ended the run 2.5 minutes in.
CPU_E2E_BYTES_PER_PARAM = 6


def check_fits_without_gpu(model_id: str, tiny: bool, gpu: bool, available: int | None = None) -> None:
    """Refuse up front a full-size model on a machine without a GPU whose end-to-end run cannot fit
    in free RAM (`available` bytes, default what the OS reports), with both figures."""
    if tiny or gpu:
        return
    need = resolve(model_id).param_count() * CPU_E2E_BYTES_PER_PARAM
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    if need > available:
        raise ResourceError(
            f"{model_id} needs about {need / 2**30:.0f} GiB of RAM end to end without a GPU (bf16 weights "
            f"and an fp32 copy for the noise floor) and {available / 2**30:.1f} GiB is free: add --tiny "
            "for the same architecture shrunk")
