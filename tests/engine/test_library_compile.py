"""The library's kernels are PyTorch operators (tasks/library/_shared/ops.py): a tiny model patched
with tasks/library compiles with torch.compile(fullgraph=True), the graph calls the library's
operators, and the compiled model computes what the patched eager model computes (bit for bit)
and what the unpatched model computes (fp32 tolerance); a static-cache `generate` through the
compiled forward keeps the unpatched model's greedy tokens.

On a CPU the backend is aot_eager (Dynamo + AOTAutograd: no graph break, and the operators' fake
implementations give the right shapes and dtypes; Inductor cannot run Triton kernels on a CPU, the
interpreter runs them); on a GPU it is Inductor, which compiles the kernels itself.
`fastkernels.patch(model, DIR)` binds what the model's family uses and names the rest in its notes.
"""

import os
import shutil

import pytest
import torch

import fastkernels
from fastkernels.models.catalog import resolve
from fastkernels.models.loading import load_model
from fastkernels.registry.tasks import library_dir, load_module

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETING else "cpu")
BACKEND = "inductor" if DEVICE.type == "cuda" else "aot_eager"
LIBRARY = str(library_dir(1).parent)
MODELS = {
    "llama": "meta-llama/Llama-3.2-1B-Instruct",
    "qwen3": "Qwen/Qwen3-8B",
    "mixtral": "mistralai/Mixtral-8x7B-Instruct-v0.1",
}
# The operators each library file puts in the graph (its _register_op names).
OPS = {
    "L2/attention_block": {"rope_rows"},
    "L2/mlp_block": {"silu_and_mul"},
    "L2/moe_block": {"moe_route", "moe_experts"},
    "L3/decoder_layer": {"rms_norm", "add_rms_norm", "rope_rows", "silu_and_mul"},
    "L4/causal_lm": {"add_rms_norm", "rms_norm", "rope_rows", "silu_and_mul"},
}


def tiny(family: str):
    return load_model(resolve(MODELS[family], tiny=True), dtype=torch.float32, device=DEVICE, seed=0).model.eval()


def ids(batch=2, seq=7, seed=0):
    return torch.randint(3, 512, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def compiled(fn, seen: set, graphs: list | None = None):
    """torch.compile(fn, fullgraph=True) with BACKEND; `seen` collects the (namespace, name) of every
    operator of a library file (namespace fk_...) in the graphs Dynamo hands over, `graphs` the
    graphs (one per compile: a recompile adds one)."""
    from torch._dynamo.backends.registry import lookup_backend

    def backend(gm, example_inputs):
        if graphs is not None:
            graphs.append(gm)
        for node in gm.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                ns, _, name = node.target.name().partition("::")
                if ns.startswith("fk_"):
                    seen.add((ns, name))
        return lookup_backend(BACKEND)(gm, example_inputs)

    return torch.compile(fn, fullgraph=True, backend=backend, dynamic=False)


@pytest.mark.parametrize("family,level", [("llama", 1), ("qwen3", 1), ("mixtral", 1), ("llama", 2), ("mixtral", 2),
                                          ("llama", 3), ("llama", 4)])
def test_patched_model_compiles_fullgraph_and_matches(family, level):
    model = tiny(family)
    x = ids()
    with torch.no_grad():
        want = model(x, use_cache=False).logits
        handle = fastkernels.patch(model, LIBRARY, level=level)
        eager = model(x, use_cache=False).logits
        seen: set = set()
        got = compiled(model, seen)(x, use_cache=False).logits
    bound = {key: OPS.get(key, {key.split("/")[1]}) for key in handle.ops}
    assert {name for _, name in seen} == set().union(*bound.values()), "the graph calls every bound operator"
    if BACKEND == "aot_eager":  # the same kernels in the same order (Inductor fuses the model's own ops)
        assert torch.equal(got, eager)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    handle.unpatch()


def test_static_cache_generate_through_the_compiled_forward_keeps_the_tokens():
    # The operators around attention, each seen in the graph; attention itself (the static-cache
    # form) in test_blocks_take_the_static_cache_form_under_the_compiled_forward[llama-1].
    model = tiny("llama")
    prompt = ids(batch=1)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static", pad_token_id=0)
    only = ["rms_norm", "add_rms_norm", "rotary_embedding", "silu_and_mul", "embedding"]
    with torch.no_grad():
        want = model.generate(prompt, **kwargs)
        handle = fastkernels.patch(model, LIBRARY, level=1, only=only)
        seen: set = set()
        model.forward = compiled(model.forward, seen)  # prefill and decode steps, both compiled
        got = model.generate(prompt, **kwargs)
    assert {name for _, name in seen} == set(only)
    assert torch.equal(got, want), (got[0, -6:].tolist(), want[0, -6:].tolist())
    handle.unpatch()


@pytest.mark.parametrize("family,level", [("llama", 1), ("llama", 2), ("qwen3", 3)])
def test_blocks_take_the_static_cache_form_under_the_compiled_forward(family, level):
    """Attention (L1, every operator of the level), attention blocks and decoder layers over HF's
    static cache: the binding hands them the whole preallocated buffers and this step's slots
    (cache_position, computed on the device), so the
    compiled decode step has static shapes and no data-dependent branch (on the H100 the L2
    library failed here before: `if past` on a length read from the cache). Greedy tokens match
    the unpatched model's."""
    torch._dynamo.reset()  # the compiles of the tests before share these code objects' recompile limit
    model = tiny(family)
    prompt = ids(batch=1)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static", pad_token_id=0)
    with torch.no_grad():
        want = model.generate(prompt, **kwargs)
        handle = fastkernels.patch(model, LIBRARY, level=level)
        seen: set = set()
        model.forward = compiled(model.forward, seen, graphs := [])
        got = model.generate(prompt, **kwargs)
        again = model.generate(prompt, **kwargs)  # the cache reset and reused: slots start at 0 again
    assert seen, "the compiled graphs call the library's operators"
    # no host read of the cache's length in the graphs (the old binding sliced the buffers at
    # get_seq_length(): an .item() per layer, a data-dependent shape), and no recompile per position
    reads = [n.target for g in graphs for n in g.graph.nodes if "local_scalar_dense" in str(n.target) or
             str(n.target).endswith("item")]
    assert reads == [] and len(graphs) == 2, (reads, len(graphs))  # one prefill graph, one decode graph
    assert torch.equal(got, want), (got[0, -6:].tolist(), want[0, -6:].tolist())
    assert torch.equal(again, want)
    handle.unpatch()


def test_operators_run_eagerly_and_each_load_gets_its_own_namespace():
    path = library_dir(1) / "rms_norm.py"
    a, b = load_module(path, name="fk_test_compile_ns_a"), load_module(path, name="fk_test_compile_ns_b")
    ns_a, ns_b = a._RMS_NORM.name().split("::")[0], b._RMS_NORM.name().split("::")[0]
    assert ns_a != ns_b and ns_a[:15] == ns_b[:15] and ns_a.startswith("fk_")  # fk_ + 12 hex of the text, then _N
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    w = torch.rand(64, generator=torch.Generator().manual_seed(1)).to(DEVICE) + 0.5
    # the operator through the dispatcher and the direct eager call run the same body
    assert torch.equal(a._RMS_NORM(x, w, 1e-6), b.rms_norm(x, w, 1e-6))


def test_patch_binds_what_the_family_uses_and_notes_the_rest(tmp_path):
    model = tiny("llama")
    handle = fastkernels.patch(model, LIBRARY)  # every level of the library, as the README does
    unused = ["L3/moe_decoder_layer", "L2/moe_block", "L1/moe_router"]
    assert handle.notes[:3] == [f"{k} is not used by llama models" for k in unused]
    assert not set(unused) & set(handle.ops) and "L1/rms_norm" in handle.ops
    handle.unpatch()
    # a broken file of an operator the family does not use is not even imported...
    shutil.copytree(library_dir(1), tmp_path / "L1")
    (tmp_path / "L1" / "moe_router.py").write_text("raise RuntimeError('broken moe_router')\n")
    fastkernels.patch(model, tmp_path, level=1).unpatch()
    # ...a broken file of one it uses still fails the patch
    (tmp_path / "L1" / "rms_norm.py").write_text("raise RuntimeError('broken rms_norm')\n")
    with pytest.raises(RuntimeError, match="broken rms_norm"):
        fastkernels.patch(model, tmp_path, level=1)
    with pytest.raises(fastkernels.errors.UsageError, match="L1/moe_router is not used by llama models"):
        fastkernels.patch(model, tmp_path, level=1, only=["moe_router"])


# L1 (the norms, attention, embedding), Qwen3's q/k-norm rotary (L3), the MoE pieces (L2), the model (L4)
@pytest.mark.parametrize("family,level", [("llama", 1), ("mixtral", 2), ("qwen3", 3), ("llama", 4)])
def test_no_library_kernel_takes_a_runtime_float(family, level):
    # Inside a compiled model Inductor types a kernel's runtime float argument fp64 (Triton alone:
    # fp32), and fp64 spreads through the kernel's math: the H100 compile of L1/attention failed on
    # it, and a norm's eps halves its speed. The gate fails such a launch; the library has none.
    from fastkernels.measure.runner import Launches

    model = tiny(family)
    Launches.floats = {}
    Launches.install()
    try:
        with torch.no_grad():
            handle = fastkernels.patch(model, LIBRARY, level=level)
            before = Launches.count
            out = model(ids(), use_cache=True)  # prefill, then one decode step over its cache
            model(ids(seq=1, seed=1), past_key_values=out.past_key_values, use_cache=True)
            handle.unpatch()
    finally:
        Launches.uninstall()
    assert Launches.count > before, "the patched model launched the library's kernels"
    assert Launches.floats == {}, list(Launches.floats)
