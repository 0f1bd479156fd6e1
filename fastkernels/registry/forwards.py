"""What a patched model calls: the call sites that run an implementation (and, under the shadow
check, its baseline beside it: `Site`), building an implementation from a module's weights, the
forwards bound on HF module instances (each mirrors HF's own and calls the operators) and the
adapters of swapped submodules. fastkernels.registry.patching decides where they go."""

from __future__ import annotations

import copy
import inspect
import re
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fastkernels.errors import UsageError
from fastkernels.registry.candidates import Implementation
from fastkernels.registry.shadow import ShadowCheck


def dense_routing(out, num_experts: int):
    """(weights[T,K], indices[T,K]) -> [T,E] fp32 map: equal routings compare equal whatever the
    order of the k picks."""
    weights, indices = out
    dense = torch.zeros(indices.shape[0], num_experts, dtype=torch.float32, device=indices.device)
    return (dense.scatter(1, indices.long(), weights.float()),)


def _to_fp32(args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point()
                 else (list(_to_fp32(a)) if isinstance(a, list) else a) for a in args)


def _clone(args):
    return tuple(a.clone() if torch.is_tensor(a) else (list(_clone(a)) if isinstance(a, list) else a) for a in args)


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return a.shape == b.shape and bool(torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) if a.is_floating_point() else torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return all(_same(x, y) for x, y in zip(a, b))
    return True


class Site:
    """One call site of one operator: calls the implementation and, while the shadow check is on,
    the baseline on clones of the same inputs."""

    def __init__(self, impl: Implementation, name: str, candidate: nn.Module, baseline: nn.Module | None,
                 shadow: ShadowCheck, normalize: Callable | None = None, consumed: tuple[int, ...] = ()) -> None:
        self.key = impl.key
        self.name = name
        m = re.search(r"layers\.(\d+)", name)
        self.layer = int(m.group(1)) if m else None
        self.candidate = candidate
        self.run_candidate = candidate.forward  # the class's forward, before any adapter is bound
        self.baseline = baseline
        self.shadow = shadow
        self.normalize = normalize
        # Inputs the model never reads again after this call (rotary's q and k, the MLP's gate and
        # up): a kernel may overwrite them in place, as Liger's rope does to save a copy.
        self.consumed = consumed
        self._baseline32: nn.Module | None = None

    @property
    def entry(self) -> Callable:
        """What the model's call site calls. Without a baseline (a patch made without shadow=True)
        that is the implementation's forward itself: no frame of ours between the model and the
        kernel, which at batch-1 decode is launch-bound. With one, it is this site, which runs the
        shadow check while it is enabled (and reads `run_candidate` at each call)."""
        return self.run_candidate if self.baseline is None else self

    def __call__(self, *args):
        if not (self.shadow.enabled and self.baseline is not None):
            return self.run_candidate(*args)
        clones = _clone(args)
        out = self.run_candidate(*args)
        kept = [i for i in range(len(args)) if i not in self.consumed]
        mutated = not _same([args[i] for i in kept], [clones[i] for i in kept])
        with torch.no_grad():
            ref = self.baseline(*_clone(clones))
        strided = [i for i, a in enumerate(args) if torch.is_tensor(a) and not a.is_contiguous()]
        self.shadow.compare(self, out, ref, mutated, strided, reference=lambda: self._reference32(clones))
        return out

    def _reference32(self, clones):
        """The baseline in fp32 on fp32 copies of the inputs (built on first need: only a call
        that exceeds the flat tolerance asks for it)."""
        if self._baseline32 is None:
            self._baseline32 = copy.deepcopy(self.baseline).float()
        with torch.no_grad():
            return self._baseline32(*_to_fp32(clones))


# ---- building implementations from a module's weights ------------------------------------------

def module_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def build_module(cls: type, init: dict, weights: dict, device, what: str) -> nn.Module:
    """cls(**init) holding copies of `weights` (their dtypes and device kept)."""
    try:
        module = cls(**init)
    except Exception as exc:  # noqa: BLE001 - a constructor that fails is the implementation's problem
        raise UsageError(f"{what}: {cls.__name__}(**{init}) failed: {type(exc).__name__}: {exc}") from exc
    params = dict(module.named_parameters())
    missing = [k for k in params if k not in weights]
    if missing:
        raise UsageError(f"{what}: {cls.__name__} has parameters the model does not: {', '.join(missing[:5])}")
    # Parameters take copies of the model's (its dtype and device); buffers the implementation
    # made itself (tables, constants) stay as they are unless the model has them under that name.
    copies = {k: weights[k].detach().clone() for k in module.state_dict() if k in weights}
    module.load_state_dict(copies, strict=False, assign=True)
    return module.to(device).eval()


# ---- reading and writing the HF cache -----------------------------------------------------------

def _pop_cache(kwargs: dict):
    cache = kwargs.pop("cache", None)
    legacy = kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def cache_kwarg(cls) -> str:
    """The name this transformers version gives the cache argument of `cls.forward`."""
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def read_static(cache, layer_idx: int, seq: int, written: bool = False):
    """(keys, values, cache_position) of one layer of HF's static cache (`StaticLayer`: what
    `cache_implementation="static"` and a compiled decode step use) once its buffers exist: the
    whole preallocated [B, Hkv, L, D] buffers and this step's `seq` slots, computed on the device
    from the layer's own counter (no host read: the step replays as a CUDA graph). None for any
    other cache (sliding-window static layers included) or before the first write. written=True:
    after this step's write (the slots are the last `seq` the counter passed)."""
    layers = getattr(cache, "layers", None) if cache is not None else None
    if layers is None or layer_idx >= len(layers):
        return None
    layer = layers[layer_idx]
    if type(layer).__name__ != "StaticLayer" or not getattr(layer, "is_initialized", False):
        return None
    count = getattr(layer, "cumulative_length", None)
    if not torch.is_tensor(count) or layer.keys is None:
        return None
    slots = torch.arange(seq, device=layer.keys.device) + count.reshape(-1)[:1]
    return layer.keys, layer.values, (slots - seq if written else slots)


def read_past(cache, layer_idx: int, like: torch.Tensor, kv_heads: int, head_dim: int):
    """(past_key, past_value) [B, Hkv, P, D] of one layer from an HF cache (P may be 0)."""
    if cache is not None:
        layers = getattr(cache, "layers", None)
        if layers is not None and layer_idx < len(layers):
            layer = layers[layer_idx]
            keys = getattr(layer, "keys", None)
            if getattr(layer, "is_initialized", keys is not None) and keys is not None and keys.numel():
                length = cache.get_seq_length(layer_idx)
                return layer.keys[:, :, :length], layer.values[:, :, :length]
    empty = like.new_empty(like.shape[0], kv_heads, 0, head_dim)
    return empty, empty.clone()


# ---- the forwards we bind on HF instances (each mirrors HF's and calls the operators) --------------
#
# At batch-1 decode every operator is launch-bound, so these forwards add per call no more than the
# views an operator's [tokens, hidden] inputs need: what never changes (has a q_norm, the sliding
# window) is read at bind time (PREPARE), and shapes go back with view_as (0.7 us a call, where
# view(torch.Size) costs 1.8 us: CPU, torch 2.13; benchmarks/binding_overhead.py measures the whole).

def _decoder_layer_forward(self, hidden_states, **kwargs):
    """HF <Family>DecoderLayer.forward with "residual + h; post_attention_layernorm" as one op. The
    keyword arguments (mask, positions, the cache under this version's name) reach the attention as
    the model passed them."""
    width = hidden_states.shape[-1]
    h = self.input_layernorm(hidden_states)
    h, _ = self.self_attn(hidden_states=h, **kwargs)
    h, residual = self._fk_slots["add_rms_norm"](h.reshape(-1, width), hidden_states.reshape(-1, width))
    return residual.view_as(hidden_states) + self.mlp(h.view_as(hidden_states))


def _prepare_attention(attn: nn.Module, slots: dict) -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    slots["attention_functions"] = ALL_ATTENTION_FUNCTIONS
    slots["qk_norm"] = "q_norm" in attn._modules  # Qwen3: per-head norms before rope
    # Qwen2/Qwen3 keep each layer's window on the module, Mistral/Mixtral read their config's; Llama has none.
    slots["sliding_window"] = (attn.sliding_window if "sliding_window" in vars(attn)
                               else getattr(attn.config, "sliding_window", None))


def _attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                       past_key_values=None, **kwargs):
    """HF <Family>Attention.forward with rotary and/or the attention core as operators."""
    slots = self._fk_slots
    if cache is None:  # transformers 5.17 calls it past_key_values
        cache = past_key_values
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape)
    k = self.k_proj(hidden_states).view(hidden_shape)
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    if slots["qk_norm"]:
        q, k = self.q_norm(q), self.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    rope = slots.get("rotary_embedding")
    if rope is not None:  # q, k as HF lays them out: [B, H, S, D] views of [B, S, H, D] storage
        q, k = rope(q, k, cos, sin)
    else:
        q, k = slots["hf"].apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)
    core = slots.get("attention")
    static = read_static(cache, self.layer_idx, q.shape[2], written=True) if core is not None else None
    if static is not None:  # the whole static buffers, keys valid up to this step's slots
        out = core(q.contiguous(), k, v, static[2])
    elif core is not None:
        out = core(q.contiguous(), k.contiguous(), v.contiguous())
    else:
        interface = slots["attention_functions"].get_interface(self.config._attn_implementation,
                                                               slots["hf"].eager_attention_forward)
        out, _ = interface(self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
                           scaling=self.scaling, sliding_window=slots["sliding_window"], **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    return self.o_proj(out), None


def _mlp_forward(self, x):
    """HF <Family>MLP.forward with act_fn(gate) * up as the operator. The projections run on the
    [tokens, hidden] rows of x (a Linear folds its leading dimensions into the same matmul), so the
    operator gets its [tokens, width] inputs as they come and one view restores x's shape."""
    rows = x.reshape(-1, x.shape[-1])
    out = self._fk_slots["silu_and_mul"](self.gate_proj(rows), self.up_proj(rows))
    return self.down_proj(out).view_as(x)


def _experts_apply_gate(self, gate_up_out):
    """HF experts' gating (grouped_mm / batched_mm paths call it) with the operator."""
    gate, up = gate_up_out.chunk(2, dim=-1)
    return self._fk_slots["silu_and_mul"](gate.contiguous(), up.contiguous())


def _experts_eager_forward(self, hidden_states, top_k_index, top_k_weights):
    """HF <Family>Experts.forward (eager loop over the experts hit), gating through _apply_gate."""
    if self.config._experts_implementation not in (None, "eager"):
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit:
        e = expert[0]
        pos, token = torch.where(mask[e])
        gate_up = F.linear(hidden_states[token], self.gate_up_proj[e])
        cur = F.linear(self._apply_gate(gate_up), self.down_proj[e])
        cur = cur * top_k_weights[token, pos, None]
        final.index_add_(0, token, cur.to(final.dtype))
    return final


def _router_forward(self, hidden_states):
    """HF <Family>TopKRouter.forward with softmax/top-k/renormalise as the operator."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    logits = F.linear(hidden_states, self.weight)
    weights, indices = self._fk_slots["moe_router"](logits)
    return logits, weights, indices


MIRRORS = {
    "decoder_layer": {"forward": _decoder_layer_forward},
    "attention": {"forward": _attention_forward},
    "mlp": {"forward": _mlp_forward},
    "experts": {"_apply_gate": _experts_apply_gate, "forward": _experts_eager_forward},
    "router": {"forward": _router_forward},
}
# kind -> prepare(instance, slots): what its mirror reads of the instance, read once when bound
PREPARE = {"attention": _prepare_attention}


# ---- adapters for swapped submodules (their forward takes HF's arguments) ------------------------

def adapt_rms_norm(site: Site, width: int):
    run = site.entry

    def forward(self, hidden_states):
        # The operator takes [tokens, hidden] (Qwen3's q/k norms: [tokens * heads, head_dim]).
        return run(hidden_states.reshape(-1, width)).view_as(hidden_states)

    return forward


def run_over_cache(run, cache, layer_idx: int, hidden_states, cos, sin, kv_heads: int, head_dim: int):
    """An attention block or decoder layer operator over one layer of the HF cache: the static-cache
    form (whole buffers and this step's slots) over a static cache, else the cached keys so far;
    this step's keys and values then go into the cache. Returns the operator's output."""
    static = read_static(cache, layer_idx, hidden_states.shape[1])
    if static is not None:
        out, key, value = run(hidden_states, cos, sin, *static)
    else:
        past_key, past_value = read_past(cache, layer_idx, hidden_states, kv_heads, head_dim)
        out, key, value = run(hidden_states, cos, sin, past_key, past_value)
    if cache is not None:
        cache.update(key, value, layer_idx)
    return out


def adapt_attention_block(site: Site, layer_idx: int, kv_heads: int, head_dim: int):
    run = site.entry

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        cache = _pop_cache(kwargs)
        cos, sin = position_embeddings
        out = run_over_cache(run, cache, layer_idx, hidden_states, cos, sin, kv_heads, head_dim)
        return out, None

    return forward


def adapt_decoder_layer(site: Site, layer_idx: int, kv_heads: int, head_dim: int):
    run = site.entry

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        cache = _pop_cache(kwargs)
        cos, sin = position_embeddings
        out = run_over_cache(run, cache, layer_idx, hidden_states, cos, sin, kv_heads, head_dim)
        return out

    return forward


def causal_lm_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                       labels=None, use_cache=None, logits_to_keep=0, **kwargs):
    """HF <Family>ForCausalLM.forward computed by a level-4 implementation over the HF cache."""
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import CausalLMOutputWithPast

    slots = self._fk_slots
    cache = _pop_cache(kwargs)
    if input_ids is None or inputs_embeds is not None or labels is not None:
        raise TypeError("a level-4 implementation takes input_ids only (no inputs_embeds, no labels)")
    use_cache = self.config.use_cache if use_cache is None else use_cache
    if use_cache and cache is None:
        cache = DynamicCache(config=self.config)
    layers = self.config.num_hidden_layers
    past_keys = past_values = None
    if cache is not None and cache.get_seq_length() > 0:
        pasts = [read_past(cache, i, input_ids, slots["kv_heads"], slots["head_dim"]) for i in range(layers)]
        past_keys, past_values = [p[0] for p in pasts], [p[1] for p in pasts]
    logits, keys, values = slots["causal_lm"](input_ids, past_keys, past_values)
    if cache is not None:
        for i in range(layers):
            cache.update(keys[i], values[i], i)
    if isinstance(logits_to_keep, int) and logits_to_keep > 0:
        logits = logits[:, -logits_to_keep:]
    elif torch.is_tensor(logits_to_keep):
        logits = logits[:, logits_to_keep]
    field_name = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    return CausalLMOutputWithPast(logits=logits, **{field_name: cache if use_cache else None})


