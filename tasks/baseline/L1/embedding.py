"""Token embedding lookup: out[b, s] = weight[input_ids[b, s]], a gather of one row of the
[V, H] table per token (the model's embed_tokens, an nn.Embedding)."""

import torch
from torch import nn


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.weight)


# ---- task metadata (read by the harness) ----------------------------------------------------

CLASS_NAME = "Embedding"
FAMILIES = {
    "llama": "nn.Embedding (LlamaModel.embed_tokens)",
    "mistral": "nn.Embedding (MistralModel.embed_tokens)",
    "mixtral": "nn.Embedding (MixtralModel.embed_tokens)",
    "qwen2": "nn.Embedding (Qwen2Model.embed_tokens)",
    "qwen3": "nn.Embedding (Qwen3Model.embed_tokens)",
    "qwen3_moe": "nn.Embedding (Qwen3MoeModel.embed_tokens)",
}
BOUND = "memory"


def init_args(config):
    return {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size}


def shapes(config, workload):
    return {
        "prefill": {"batch": workload.batch, "seq": workload.prefill_len},
        "decode": {"batch": workload.batch, "seq": 1},
    }


def make_inputs(config, shape, dtype, device, generator):
    # Token ids anywhere in the vocabulary (dtype is the table's, not the ids').
    ids = torch.randint(0, config.vocab_size, (shape["batch"], shape["seq"]), device=device, generator=generator)
    return (ids,)


def cost(config, shape, dtype):
    tokens = shape["batch"] * shape["seq"]
    size = torch.empty((), dtype=dtype).element_size()
    # read the ids and one table row per token, write the rows
    return {"bytes": tokens * 8 + 2 * tokens * config.hidden_size * size, "flops": 0}
