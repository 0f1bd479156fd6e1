"""The kernel library (tasks/library/L1): each kernel computes what its baseline computes, for every
family that uses the op, on every named shape of the tiny configs, in bf16 and fp32 (under the
Triton interpreter on a CPU machine; compiled and on the GPU where there is one); then the layouts,
sizes and launch paths the registry's tiny shapes do not reach (strided views, non-power-of-two
widths, split-K decode, every autotune config, the GPU-only autotuned launch code).

Tolerances are the unit benchmark's (fastkernels.rules.tolerance.TOLERANCES, one definition):
|ours - baseline| <= atol * rms(baseline) + rtol * |baseline|, with atol = rtol = 2e-2 in bf16 and
1e-4 in fp32. bf16 needs the room for a second reason here: the interpreter rounds fp32 -> bf16 by
truncation (up to 1 ulp = 0.8% where the GPU rounds to nearest), and the baseline rounds 2-3 times.
Library files are ours, so they are imported in-process (candidates only ever run in a child).
"""

import math
import os

import pytest
import torch

from fastkernels.models.catalog import known_models, resolve
from fastkernels.registry import build_spec, load_task, task_names
from fastkernels.registry.tasks import (
    build_baseline,
    build_inputs,
    kernel_source,
    library_dir,
    load_module,
)
from fastkernels.rules.tolerance import TOLERANCES

# Triton 3.6's interpreter converts 1-element arrays with int() on every program-id-derived loop
# bound (numpy deprecation; pinned below 2.4, where it becomes an error).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

DTYPES = (torch.bfloat16, torch.float32)
# Under the interpreter (no GPU) kernels run on CPU tensors; on a GPU machine the same tests compile
# the kernels for real and run them on the GPU.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETING else "cpu")
MODEL_OF_FAMILY = {}
for _m in known_models():
    MODEL_OF_FAMILY.setdefault(resolve(_m).family, _m)

LIBRARY_OPS = sorted(p.stem for p in library_dir(1).glob("*.py") if not p.stem.startswith("_"))
CASES = [(op, fam) for op in LIBRARY_OPS if op in task_names(1) for fam in load_task(1, op).FAMILIES]


def lib(op: str):
    return load_module(library_dir(1) / f"{op}.py", name=f"fk_library_L1_{op}")


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def assert_matches(ours, ref, what: str, tol_dtype=None):
    """Same structure, shape, dtype; finite; integers equal; floats within the dtype's tolerance."""
    ours, ref = _flat(ours), _flat(ref)
    assert len(ours) == len(ref), what
    for i, (a, b) in enumerate(zip(ours, ref)):
        tag = f"{what} output {i}"
        assert a.shape == b.shape and a.dtype == b.dtype, (tag, a.shape, b.shape, a.dtype, b.dtype)
        if not b.is_floating_point():
            assert torch.equal(a, b), tag
            continue
        a, b = a.float(), b.float()
        assert torch.isfinite(a).all(), f"{tag}: NaN/Inf (an element never written?)"
        assert b.abs().max() > 0, f"{tag}: all-zero reference proves nothing"
        tol = TOLERANCES[str(tol_dtype or ours[i].dtype).replace("torch.", "")]
        bound = tol.atol * b.pow(2).mean().sqrt() + tol.rtol * b.abs()
        err = (a - b).abs()
        worst = (err / bound).max().item()
        assert worst <= 1.0, f"{tag}: off by {err.max().item():.3g} ({worst:.2f}x the {tol} bound)"


def run_against_baseline(op: str, family: str, dtype, seed: int = 0):
    spec = build_spec(1, op, MODEL_OF_FAMILY[family], tiny=True)
    cls = getattr(lib(op), spec.class_name)
    for shape in spec.shapes:
        base = build_baseline(spec, shape, dtype, DEVICE, seed=seed)
        ours = cls(**spec.init_args_for(shape)).to(DEVICE, dtype)
        ours.load_state_dict(base.state_dict())  # same parameter names as the baseline, strictly
        inputs = build_inputs(spec, shape, dtype, DEVICE, seed=100 + seed)
        saved = [x.clone() for x in inputs]
        with torch.no_grad():
            got = ours(*inputs)
            want = base(*inputs)
        for x, keep in zip(inputs, saved):
            assert torch.equal(x, keep), f"{op} {family} {shape}: modified its input"
        assert_matches(got, want, f"{op} {family} {shape} {dtype}")


def test_every_l1_task_has_a_library_kernel():
    assert set(task_names(1)) <= set(LIBRARY_OPS), f"missing: {set(task_names(1)) - set(LIBRARY_OPS)}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
@pytest.mark.parametrize("op,family", CASES, ids=[f"{o}-{f}" for o, f in CASES])
def test_library_matches_baseline(op, family, dtype):
    run_against_baseline(op, family, dtype)


# ---- paths the tiny registry shapes do not reach --------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*size, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*size, generator=_gen(seed)) * scale).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_rms_norm_layouts_and_launch_shapes(dtype):
    m = lib("rms_norm")
    base = load_task(1, "rms_norm").RMSNorm
    # (rows, width): a Qwen2.5 row (3584 = 7 * 512), a token of one, several rows per tile with a
    # ragged last tile, a width smaller than one tile
    for rows, width in [(2, 3584), (1, 4096), (37, 48), (5, 130)]:
        ref = base(width, eps=1e-5).to(DEVICE, dtype)
        with torch.no_grad():
            ref.weight.copy_(1 + 0.5 * _randn(width, seed=1))
        x = _randn(rows, width, dtype=dtype, seed=rows)
        assert_matches(m.rms_norm(x, ref.weight, 1e-5), ref(x), f"rms_norm {rows}x{width}")
    # every autotune config (the GPU picks one): persistent ones loop over several tiles per
    # program here (the CPU counts as 4 SMs), with 2-row tiles and a ragged end
    x = _randn(45, 64, dtype=dtype, seed=7)
    ref = base(64).to(DEVICE, dtype)
    for cfg in m._CONFIGS:
        c = {**cfg.kwargs, "num_warps": cfg.num_warps, "BLOCK_M": 2}
        assert_matches(m.rms_norm(x, ref.weight, 1e-6, config=c), ref(x), f"rms_norm {c}")
    # strided rows (every other row of a bigger tensor) and a 3-D input
    x = _randn(20, 64, dtype=dtype, seed=3)[::2]
    assert_matches(m.RMSNorm(64).to(DEVICE, dtype)(x), ref(x), "rms_norm strided rows")
    x3 = _randn(2, 3, 64, dtype=dtype, seed=4)
    assert_matches(m.RMSNorm(64).to(DEVICE, dtype)(x3), ref(x3), "rms_norm 3-D")


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_add_rms_norm_layouts_and_launch_shapes(dtype):
    m = lib("add_rms_norm")
    base = load_task(1, "add_rms_norm").AddRMSNorm(3584, eps=1e-6).to(DEVICE, dtype)
    x, r = _randn(3, 3584, dtype=dtype, seed=1), _randn(3, 3584, dtype=dtype, seed=2, scale=4)
    ours = m.AddRMSNorm(3584, eps=1e-6).to(DEVICE, dtype)
    assert_matches(ours(x, r), base(x, r), "add_rms_norm 3584")
    base = load_task(1, "add_rms_norm").AddRMSNorm(48).to(DEVICE, dtype)
    x = _randn(30, 96, dtype=dtype, seed=3)[:, :48]  # strided rows
    r = _randn(48, 30, dtype=dtype, seed=4).t()  # column-major: gets copied
    for cfg in m._CONFIGS:
        c = {**cfg.kwargs, "num_warps": cfg.num_warps, "BLOCK_M": 4}
        assert_matches(m.add_rms_norm(x, r, base.weight, 1e-6, config=c), base(x, r), f"add_rms_norm {c}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_silu_and_mul_layouts(dtype):
    m = lib("silu_and_mul")
    f = load_task(1, "silu_and_mul").SiluAndMul()
    g, u = _randn(1, 14336, dtype=dtype, seed=1, scale=2), _randn(1, 14336, dtype=dtype, seed=2)
    assert_matches(m.SiluAndMul()(g, u), f(g, u), "silu_and_mul decode 14336")
    gate_up = _randn(7, 2 * 300, dtype=dtype, seed=3, scale=2)  # views of a fused [T, 2I] projection
    g, u = gate_up[:, :300], gate_up[:, 300:]
    assert_matches(m.silu_and_mul(g, u, config={"BLOCK": 256}), f(g, u), "silu_and_mul fused-projection views")
    for cfg in m._CONFIGS:  # every autotune config, on a flat stream with a ragged last block
        g, u = _randn(3, 1000, dtype=dtype, seed=6, scale=2), _randn(3, 1000, dtype=dtype, seed=7)
        c = {**cfg.kwargs, "num_warps": cfg.num_warps}
        assert_matches(m.silu_and_mul(g, u, config=c), f(g, u), f"silu_and_mul {c}")
    g, u = _randn(40, 9, dtype=dtype, seed=4).t(), _randn(40, 9, dtype=dtype, seed=5).t()
    assert_matches(m.SiluAndMul()(g, u), f(g, u), "silu_and_mul transposed")


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_rotary_hf_layout_and_head_groups(dtype):
    m = lib("rotary_embedding")
    ref = load_task(1, "rotary_embedding").RotaryEmbedding
    # Qwen2.5-like 7 query heads per kv head, head_dim 128, HF's view(B,S,H,D).transpose(1,2) layout.
    b, s, hq, hkv, d = 2, 5, 7, 1, 128
    q = _randn(b, s, hq, d, dtype=dtype, seed=1).transpose(1, 2)
    k = _randn(b, s, hkv, d, dtype=dtype, seed=2).transpose(1, 2)
    ang = torch.rand(b, s, d // 2, generator=_gen(3)).to(DEVICE) * 50
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    want = ref(d)(q, k, cos, sin)
    configs = [None, {"HEADS": 1}] + [{**c.kwargs, "num_warps": c.num_warps} for c in m._CONFIGS]
    for cfg in configs:  # every autotune config; 8 heads per program runs past the last head
        got = m.apply_rotary(q, k, cos, sin, config=cfg)
        assert_matches(got, want, f"rotary {cfg}")
        assert got[0].stride() == want[0].stride(), "output layout differs from eager's"
    # cos/sin shared by the batch ([1, S, D]) broadcast like eager
    assert_matches(m.RotaryEmbedding(d)(q, k, cos[:1], sin[:1]), ref(d)(q, k, cos[:1], sin[:1]), "rotary cos [1,S,D]")


def _attention_ref64(q, k, v, scaling):
    """Causal bottom-right GQA attention in float64, [B, S, Hq, D]."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s, total = q.shape[2], k.shape[2]
    scores = q @ k.transpose(2, 3) * scaling
    hidden = torch.arange(total, device=q.device)[None, :] > torch.arange(total - s, total, device=q.device)[:, None]
    return (scores.masked_fill(hidden, float("-inf")).softmax(-1) @ v).transpose(1, 2)


def check_attention(out, q, k, v, scaling, what):
    """Relative Frobenius error against float64: bf16 operands ~3e-3 (eager bf16 is there too;
    1.5e-2 leaves room for the interpreter's truncating casts), fp32 ~1e-7 (limit 1e-5)."""
    ref = _attention_ref64(q, k, v, scaling)
    assert out.shape == ref.shape and out.dtype == q.dtype and out.is_contiguous(), what
    assert torch.isfinite(out).all(), what
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < (1.5e-2 if q.dtype == torch.bfloat16 else 1e-5), f"{what}: relative error {rel:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_attention_prefill_paths(dtype):
    m = lib("attention")
    # every autotune config's block shape (the GPU path picks among them), on a ragged length
    b, hq, hkv, s, d = 1, 4, 2, 150, 16
    q, k, v = (_randn(b, h, s, d, dtype=dtype, seed=i) for i, h in enumerate((hq, hkv, hkv)))
    for cfg in m._PREFILL_CONFIGS:
        c = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        for tma in (False, True):  # pointer loads, and the Hopper TMA-descriptor loads of K/V
            out = m.attention_prefill(q, k, v, d**-0.5, config=c, tma=tma)
            check_attention(out, q, k, v, d**-0.5, f"prefill {c} tma={tma}")
    # chunked prefill (S new tokens over P cached ones), head_dim 128, HF's transposed q layout,
    # group of 7 (Qwen2.5), and a head_dim that is not a power of two
    for b, hq, hkv, s, p, d in [(2, 4, 4, 20, 45, 16), (1, 2, 1, 9, 0, 128), (1, 7, 1, 33, 3, 48)]:
        q = _randn(b, s, hq, d, dtype=dtype, seed=10).transpose(1, 2)
        k = _randn(b, hkv, p + s, d, dtype=dtype, seed=11)
        v = _randn(b, hkv, p + s, d, dtype=dtype, seed=12)
        check_attention(m.Attention(hq, hkv, d, d**-0.5)(q, k, v), q, k, v, d**-0.5, f"prefill {b, hq, hkv, s, p, d}")
    # TMA with a chunk whose key blocks run past one head's keys into the next head's rows
    q, k, v = _randn(2, 4, 20, 16, dtype=dtype, seed=20), _randn(2, 2, 45, 16, dtype=dtype, seed=21), _randn(2, 2, 45, 16, dtype=dtype, seed=22)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    check_attention(m.attention_prefill(q, k, v, 0.25, config=cfg, tma=True), q, k, v, 0.25, "prefill tma chunked")


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_attention_decode_split_k(dtype):
    m = lib("attention")
    # (B, Hq, Hkv, keys, D, splits): uneven last chunk, one chunk (no merge launch), more splits
    # than key blocks would give, a group of 8 query heads, head_dim 128
    # and 25 splits of 16 keys (the merge sums partials 16 splits at a time)
    cases = [(2, 4, 2, 200, 16, 3, None), (1, 8, 1, 70, 16, 1, None), (1, 4, 2, 129, 128, 7, None),
             (3, 6, 2, 64, 16, None, None), (1, 2, 1, 400, 16, 25, 16)]
    for b, hq, hkv, n, d, splits, block_n in cases:
        q = _randn(b, hq, 1, d, dtype=dtype, seed=1)
        k, v = _randn(b, hkv, n, d, dtype=dtype, seed=2), _randn(b, hkv, n, d, dtype=dtype, seed=3)
        out = m.attention_decode(q, k, v, d**-0.5, n_splits=splits, block_n=block_n)
        check_attention(out, q, k, v, d**-0.5, f"decode {b, hq, hkv, n, d, splits}")
    assert m.decode_splits(1, 8, 4097, 64, 132) == (320, 13)  # Llama-3.1-8B decode: 104 programs
    # the static-cache form: 400-row buffers whose keys end at slot 150 (the rows after it are
    # garbage); the plan splits the whole buffer, so the chunks past slot 150 run no step and the
    # merge gives them no weight; the result is attention over the 151 keys alone
    q = _randn(1, 4, 1, 16, dtype=dtype, seed=4)
    k, v = _randn(1, 2, 400, 16, dtype=dtype, seed=5) * 8, _randn(1, 2, 400, 16, dtype=dtype, seed=6) * 8
    for splits in (1, 4, 25):
        out = m.attention_decode(q, k, v, 0.25, n_splits=splits, block_n=16,
                                 cache_position=torch.tensor([150], device=DEVICE))
        check_attention(out, q, k[:, :, :151], v[:, :, :151], 0.25, f"decode static, {splits} splits")
    assert m.decode_splits(1, 4, 4097, 64, 132) == (192, 22)  # Qwen2.5-7B decode: 88 programs


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_moe_router_shapes(dtype):
    m = lib("moe_router")
    base = load_task(1, "moe_router").MoERouter
    # non-power-of-two experts, a ragged last row block, top-8 of 128, no renormalisation
    for t, e, k, norm, cast in [(37, 60, 6, True, False), (70, 128, 8, False, True), (1, 8, 2, True, False)]:
        logits = torch.stack([torch.randperm(e, generator=_gen(i)) for i in range(t)]).float() / e * 4
        logits = logits.to(DEVICE, dtype)  # distinct per row: no tie decides the order
        assert_matches(m.MoERouter(e, k, norm, cast)(logits), base(e, k, norm, cast)(logits), f"router {t, e, k}",
                       tol_dtype=dtype)


def test_embedding_shapes_and_bad_ids():
    m = lib("embedding")
    for b, s, v, h in [(1, 1, 300, 4096), (3, 70, 100, 96), (2, 5, 50, 3584)]:
        emb = m.Embedding(v, h).to(DEVICE)
        with torch.no_grad():
            emb.weight.copy_(_randn(v, h, seed=v))
        ids = torch.randint(0, v, (b, s), generator=_gen(h)).to(DEVICE)
        assert torch.equal(emb(ids), torch.nn.functional.embedding(ids, emb.weight)), (b, s, v, h)
    emb = m.Embedding(100, 16).to(DEVICE)
    with torch.no_grad():
        emb.weight.copy_(_randn(100, 16, seed=5))
    out = emb(torch.tensor([[0, -1, 100, 99]], device=DEVICE))  # out of range: zero rows, no fault
    assert torch.equal(out[0, 0], emb.weight[0]) and torch.equal(out[0, 3], emb.weight[99])
    assert out[0, 1].abs().sum() == 0 and out[0, 2].abs().sum() == 0 and not math.isnan(out.sum().item())


def test_unit_benchmark_passes_a_library_kernel():
    """The sandboxed unit benchmark (child process, poisoned memory, aliasing and caching checks)
    accepts the library's attention for Qwen2.5 (GQA group of 7 in the real model, 2 in the tiny)."""
    from fastkernels.judge.gate import run_unit

    spec = build_spec(1, "attention", MODEL_OF_FAMILY["qwen2"], tiny=True)
    report = run_unit(spec, kernel_source(library_dir(1) / "attention.py"), seeds=1, timing=False)
    assert report.passed, report.failure_message()
    assert {(s.shape, s.dtype) for s in report.shapes} == {
        (shape, dt) for shape in spec.shapes for dt in ("bfloat16", "float32")
    }


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm", "silu_and_mul", "rotary_embedding", "attention"])
def test_gpu_launch_path_with_every_tuned_config(op, monkeypatch):
    """The autotuned launch a GPU takes for prefill-sized inputs (grid lambdas, heuristics, TMA
    pre_hook) on small inputs, one config at a time: a one-config autotuner launches untimed, so
    this runs under the interpreter too."""
    m = lib(op)
    (tuned,) = [v for name, v in vars(m).items() if name.endswith("_tuned")]
    monkeypatch.setattr(m, "_interpreting", lambda: False)
    monkeypatch.setattr(m, "_TUNE_MIN_ELEMENTS", 0, raising=False)
    task = load_task(1, op)
    dtype = torch.bfloat16
    if op == "rms_norm":
        ref = task.RMSNorm(96).to(DEVICE, dtype)
        args = (_randn(37, 96, dtype=dtype, seed=1),)
        ours = m.RMSNorm(96).to(DEVICE, dtype)
    elif op == "add_rms_norm":
        ref = task.AddRMSNorm(96).to(DEVICE, dtype)
        args = (_randn(37, 96, dtype=dtype, seed=1), _randn(37, 96, dtype=dtype, seed=2, scale=4))
        ours = m.AddRMSNorm(96).to(DEVICE, dtype)
    elif op == "silu_and_mul":
        ref, ours = task.SiluAndMul(), m.SiluAndMul()
        args = (_randn(3, 5000, dtype=dtype, seed=1, scale=2), _randn(3, 5000, dtype=dtype, seed=2))
    elif op == "rotary_embedding":
        ref, ours = task.RotaryEmbedding(32), m.RotaryEmbedding(32)
        ang = torch.rand(2, 40, 32, generator=_gen(3)).to(DEVICE) * 9
        args = (_randn(2, 5, 40, 32, dtype=dtype, seed=1), _randn(2, 3, 40, 32, dtype=dtype, seed=2),
                ang.cos().to(dtype), ang.sin().to(dtype))
    else:  # fp16: the interpreter's tl.dot is right for fp16 operands (it is not for bf16)
        dtype = torch.float16
        monkeypatch.setattr(m, "_tma_ok", lambda *a: True)  # the descriptors + pre_hook path
        ref, ours = task.Attention(4, 2, 16, 0.25), m.Attention(4, 2, 16, 0.25)
        args = (_randn(1, 4, 130, 16, dtype=dtype, seed=1), _randn(1, 2, 130, 16, dtype=dtype, seed=2),
                _randn(1, 2, 130, 16, dtype=dtype, seed=3))
    if op != "attention":
        ours.load_state_dict(ref.state_dict())
    want = ref(*args)
    for cfg in list(tuned.configs):
        monkeypatch.setattr(tuned, "configs", [cfg])
        monkeypatch.setattr(m, "_TUNED", {}, raising=False)  # the launcher remembers the tuner's pick
        with torch.no_grad():
            got = ours(*args)
        assert_matches(got, want, f"{op} tuned config {cfg}", tol_dtype="float16" if dtype == torch.float16 else None)
