"""The model catalog: resolving ids (bundled, local folder, HF cache), tiny variants that keep the
architecture, seeded random weights, the memory check, and a tiny model of every family that
builds and generates on CPU."""

import json

import pytest
import torch

from fastkernels.errors import ResourceError, UsageError
from fastkernels.models import loading
from fastkernels.models.catalog import SUPPORTED_FAMILIES, known_models, resolve
from fastkernels.models.loading import load_model

MODEL_OF_FAMILY = {}
for _m in known_models():
    MODEL_OF_FAMILY.setdefault(resolve(_m).family, _m)


def _tiny_llama_config() -> dict:
    return dict(resolve("meta-llama/Llama-3.2-1B-Instruct", tiny=True).config_dict)


# ---- resolve ------------------------------------------------------------------------------------


def test_every_supported_family_has_a_bundled_model():
    assert sorted(MODEL_OF_FAMILY) == sorted(SUPPORTED_FAMILIES)


def test_unknown_id_is_a_usage_error_listing_the_known_models():
    with pytest.raises(UsageError) as exc:
        resolve("nope/nope")
    msg = str(exc.value)
    assert "nope/nope" in msg and "\n" not in msg
    for model_id in known_models():
        assert model_id in msg


def test_local_folder_with_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_tiny_llama_config()))
    entry = resolve(str(tmp_path))
    assert entry.family == "llama" and not entry.tiny
    assert entry.source == str(tmp_path / "config.json")
    assert entry.hf_config().hidden_size == 64


def test_hf_cache_config_is_found_offline(tmp_path, monkeypatch):
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/config.json}.
    import huggingface_hub.constants

    repo = tmp_path / "models--someorg--cached-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(_tiny_llama_config()))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    entry = resolve("someorg/cached-llama")
    assert entry.family == "llama" and "abc123" in entry.source


def test_unsupported_family_is_a_usage_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(UsageError, match="'gpt2'.*supported families: llama"):
        resolve(str(tmp_path))


# ---- tiny variants ------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", known_models())
def test_tiny_keeps_the_architecture(model_id):
    full, tiny = resolve(model_id).hf_config(), resolve(model_id, tiny=True).hf_config()
    assert tiny.model_type == full.model_type
    assert tiny.num_hidden_layers == 2 and tiny.vocab_size == 512
    group = full.num_attention_heads // full.num_key_value_heads
    assert tiny.num_attention_heads // tiny.num_key_value_heads == group > 1
    assert tiny.num_key_value_heads > 1  # several KV heads, so a head-mapping bug is visible
    assert tiny.rope_parameters["rope_type"] == full.rope_parameters["rope_type"]
    assert tiny.tie_word_embeddings == full.tie_word_embeddings
    if full.model_type in ("mixtral", "qwen3_moe"):
        experts = lambda c: getattr(c, "num_local_experts", None) or c.num_experts  # noqa: E731
        assert experts(tiny) > tiny.num_experts_per_tok > 1
        assert getattr(tiny, "norm_topk_prob", True) == getattr(full, "norm_topk_prob", True)


@pytest.fixture(scope="module")
def tiny_models():
    """One tiny fp32 model per family, seeded random weights."""
    return {f: load_model(resolve(m, tiny=True), dtype=torch.float32, seed=0) for f, m in MODEL_OF_FAMILY.items()}


def test_tiny_models_have_the_family_features(tiny_models):
    for family, loaded in tiny_models.items():
        layer = loaded.model.model.layers[0]
        attn = layer.self_attn
        head_dim = loaded.config.head_dim if family != "qwen2" else loaded.config.hidden_size // loaded.config.num_attention_heads
        assert attn.k_proj.out_features == loaded.config.num_key_value_heads * head_dim
        has_qk_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
        assert has_qk_norm == (family in ("qwen3", "qwen3_moe")), family
        if has_qk_norm:
            assert attn.q_norm.weight.shape == (head_dim,)
        qkv_bias = [p.bias is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        assert qkv_bias == [family == "qwen2"] * 3, family
        assert attn.o_proj.bias is None
        is_moe = hasattr(layer.mlp, "experts")
        assert is_moe == (family in ("mixtral", "qwen3_moe")), family
        if is_moe:
            cfg = loaded.config
            assert layer.mlp.gate.weight.shape == (getattr(cfg, "num_local_experts", None) or cfg.num_experts, cfg.hidden_size)


# ---- loading ------------------------------------------------------------------------------------


def test_random_weights_are_seeded_reproducible_and_not_hf_defaults():
    entry = resolve("Qwen/Qwen3-8B", tiny=True)  # has q/k norms besides the layer norms
    a = load_model(entry, seed=0)
    b = load_model(entry, seed=0)
    c = load_model(entry, seed=1)
    assert "seeded random weights (seed=0)" == a.weights and a.dtype == torch.bfloat16
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    norms = [n for n in sa if "norm" in n]
    assert any("q_norm" in n for n in norms) and any(n == "model.norm.weight" for n in norms)
    for name, p in sa.items():
        torch.testing.assert_close(p, sb[name], rtol=0, atol=0, msg=name)
        assert not torch.equal(p, sc[name]), f"{name} does not depend on the seed"
        assert p.float().std() > 0, f"{name} is constant"
    for name in norms:
        assert not torch.all(sa[name] == 1), f"{name} kept HF's all-ones init"


def test_real_weights_in_a_local_folder_are_loaded(tmp_path, tiny_models):
    saved = tiny_models["llama"].model
    saved.save_pretrained(tmp_path)
    loaded = load_model(resolve(str(tmp_path)), dtype=torch.float32)
    assert loaded.weights.startswith("real weights from")
    for name, p in saved.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], p, rtol=0, atol=0, msg=name)


def test_model_that_does_not_fit_is_a_resource_error_suggesting_tiny(monkeypatch):
    monkeypatch.setattr(loading, "available_memory", lambda device: 4 * 2**30)
    with pytest.raises(ResourceError) as exc:
        load_model(resolve("meta-llama/Llama-3.1-8B-Instruct"))  # ~16 GB of bf16 weights
    assert "--tiny" in str(exc.value) and "4.0 GiB" in str(exc.value)
    # the same architecture shrunk fits in the same memory
    assert load_model(resolve("meta-llama/Llama-3.1-8B-Instruct", tiny=True)).model is not None


# ---- generation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tiny_model_generates_greedily_on_cpu(family, tiny_models):
    model = tiny_models[family].model
    model.generation_config.eos_token_id = None  # always produce all the new tokens
    prompt = torch.randint(3, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    new = 4
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new, do_sample=False)
        assert out.shape == (1, prompt.shape[1] + new)
        assert torch.equal(out[:, : prompt.shape[1]], prompt)
        # The cached decode agrees with recomputing the whole sequence at every step.
        seq = prompt
        for _ in range(new):
            logits = model(seq).logits
            assert torch.isfinite(logits).all()
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq), family


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tiny_model_generates_in_bf16(family):
    # bf16 is what `load_model` gives by default; recomputation can round differently from the
    # cached decode here, so this checks that it runs and yields finite logits and valid ids.
    loaded = load_model(resolve(MODEL_OF_FAMILY[family], tiny=True), seed=1)
    model = loaded.model
    model.generation_config.eos_token_id = None
    prompt = torch.randint(3, 512, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, 8) and int(out.sequences.max()) < 512
    assert next(model.parameters()).dtype == torch.bfloat16
    assert len(out.logits) == 3 and all(torch.isfinite(step).all() for step in out.logits)


def test_full_size_model_without_gpu_is_refused_up_front_with_the_memory_figure(monkeypatch):
    from fastkernels.agent.agent import AgentConfig
    from fastkernels.models.catalog import check_fits_without_gpu

    llama = "meta-llama/Llama-3.1-8B-Instruct"
    free = 24 * 2**30  # the 24 GB machine where the OOM killer ended the run
    with pytest.raises(ResourceError, match=r"needs about 45 GiB of RAM .* 24\.0 GiB is free: add --tiny"):
        check_fits_without_gpu(llama, tiny=False, gpu=False, available=free)
    check_fits_without_gpu(llama, tiny=True, gpu=False, available=free)  # the tiny variant runs
    check_fits_without_gpu(llama, tiny=False, gpu=True, available=free)  # a GPU run loads it there
    check_fits_without_gpu("meta-llama/Llama-3.2-1B-Instruct", tiny=False, gpu=False, available=free)
    # the agent refuses when it is configured, before anything runs (unless it skips the e2e run)
    import psutil

    monkeypatch.setattr("fastkernels.sandbox.cuda_present", lambda: False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": free})())
    with pytest.raises(ResourceError, match="45 GiB"):
        AgentConfig(model=llama, level=1)
    AgentConfig(model=llama, level=1, e2e=False)
    AgentConfig(model=llama, level=1, tiny=True)
