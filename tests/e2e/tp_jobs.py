"""Jobs the tensor-parallel tests run on every rank (spawned processes import them by name)."""

import torch


def sharded_logits(payload: dict) -> dict:
    """Teacher-forced fp32 logits of a fixed prompt from this rank's shard of each tiny model,
    with what the shard looks like."""
    from fastkernels.models.catalog import resolve
    from fastkernels.models.sharding import AllReduceOutput, load_sharded

    out = {}
    for model_id in payload["models"]:
        loaded = load_sharded(resolve(model_id, tiny=True), rank=payload["tp_rank"], world=payload["tp_world"],
                              dtype=torch.float32, device=payload["device"], seed=0)
        model = loaded.model
        ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        layer = model.model.layers[0]
        out[model_id] = {
            "logits": logits.tolist(),
            "q_rows": layer.self_attn.q_proj.weight.shape[0],
            "heads": model.config.num_attention_heads,
            "kv_heads": model.config.num_key_value_heads,
            "wrapped": sorted(n for n, m in layer.named_children() if isinstance(m, AllReduceOutput)),
        }
        # The full-size route: built on the meta device, sliced, then given random weights.
        meta = load_sharded(resolve(model_id, tiny=True), rank=payload["tp_rank"], world=payload["tp_world"],
                            dtype=torch.float32, device=payload["device"], seed=0, from_meta=True).model
        with torch.no_grad():
            meta_logits = meta(ids, use_cache=False).logits
        out[model_id].update(meta_finite=bool(torch.isfinite(meta_logits).all()),
                             meta_std=float(meta_logits.std()),
                             meta_q_rows=meta.model.layers[0].self_attn.q_proj.weight.shape[0],
                             meta_rotary_ok=bool(torch.equal(meta.model.rotary_emb.inv_freq,
                                                             model.model.rotary_emb.inv_freq)))
    return out
