"""Where a family's modules live in transformers, defined once: `modeling_<family>` and the
class-name prefix of its modules (LlamaRMSNorm, Qwen3MoeAttention, ...)."""

from __future__ import annotations

import importlib

# Family (config.model_type) -> the class-name prefix of its HF modules.
FAMILY_PREFIX = {
    "llama": "Llama",
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3Moe",
}


def hf_module(family: str):
    """transformers.models.<family>.modeling_<family>."""
    return importlib.import_module(f"transformers.models.{family}.modeling_{family}")


def hf_class(family: str, suffix: str, default=AttributeError):
    """The family's `<Prefix><suffix>` class, e.g. ("qwen3_moe", "DecoderLayer") -> Qwen3MoeDecoderLayer.
    Without `default`, a missing class raises AttributeError."""
    name = FAMILY_PREFIX[family] + suffix
    if default is AttributeError:
        return getattr(hf_module(family), name)
    return getattr(hf_module(family), name, default)
