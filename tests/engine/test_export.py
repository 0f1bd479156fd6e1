"""`fastkernels export DIR --out OUT` writes a repository the Hugging Face `kernels` package loads
from disk: a fresh Python loads the exported tasks/library with `kernels`, `kernelize`s a tiny Llama
with its layers (RMSNorm, the gated MLP's SiLU-and-mul, rotary), and the model computes what the
unpatched one computes while our kernels run. A layer is exported only where the kernel class takes
its state from the host module; bad input fails in one line."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastkernels.cli import main
from fastkernels.export import VARIANT, export_kernels
from fastkernels.registry.tasks import library_dir

LIBRARY = library_dir(1).parent
REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: only `kernels`, transformers and the model catalog are imported.
KERNELIZE = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import torch

    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    device = "cuda" if torch.cuda.is_available() and not interpreting else "cpu"

    from kernels import (LocalLayerRepository, Mode, get_local_kernel, kernelize,
                         replace_kernel_forward_from_hub, use_kernel_mapping)
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    from fastkernels.models.catalog import resolve
    from fastkernels.models.loading import load_model

    repo = Path(sys.argv[1])
    model = load_model(resolve("meta-llama/Llama-3.2-1B-Instruct", tiny=True), dtype=torch.float32,
                       device=device, seed=0).model.eval()
    ids = torch.randint(3, 512, (2, 7), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        want = model(ids, use_cache=False).logits

    kernel = get_local_kernel(repo)
    calls = {}  # the kernel files' entry points, counted where the layers call them
    for key, fn in (("L1/rms_norm", "rms_norm"), ("L1/silu_and_mul", "silu_and_mul"),
                    ("L1/rotary_embedding", "apply_rotary")):
        module = kernel.modules[key]

        def counting(*args, _run=getattr(module, fn), _fn=fn, **kwargs):
            calls[_fn] = calls.get(_fn, 0) + 1
            return _run(*args, **kwargs)

        setattr(module, fn, counting)

    replace_kernel_forward_from_hub(LlamaMLP, "SiluAndMulMLP")
    names = ("RMSNorm", "SiluAndMulMLP", "rotary_pos_emb")
    mapping = {n: {device: LocalLayerRepository(repo, layer_name=n)} for n in names}
    with use_kernel_mapping(mapping):
        kernelize(model, mode=Mode.INFERENCE, device=device)
    with torch.no_grad():
        got = model(ids, use_cache=False).logits

    norms = [m for m in model.modules() if isinstance(m, LlamaRMSNorm)]
    mlps = [m for m in model.modules() if isinstance(m, LlamaMLP)]
    print(json.dumps({
        "device": device, "calls": calls, "n_norms": len(norms), "n_mlps": len(mlps),
        "max_err": (got - want).abs().max().item(), "scale": want.abs().max().item(),
        "norms_swapped": all(m.forward.__func__ is kernel.layers.RMSNorm.forward for m in norms),
        "mlps_swapped": all(m.forward.__func__ is kernel.layers.SiluAndMulMLP.forward for m in mlps),
        "ops": sorted(kernel.ops),
    }))
''')


def _python(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=300, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "repo"
    assert main(["export", str(LIBRARY), "--out", str(out)]) == 0
    return out


def test_export_writes_the_kernels_layout(exported):
    pkg = "fastkernels_library"
    toml = (exported / "build.toml").read_text()
    assert 'name = "fastkernels-library"' in toml and "[kernel.rms_norm_cuda]" in toml
    assert 'cuda-capabilities = ["8.0"' in toml  # raw CUDA: sources with their capabilities
    assert (exported / "csrc" / "rms_norm" / "rms_norm.cu").read_text().count("__global__") >= 1
    for base in (exported / "torch-ext" / pkg, exported / "build" / VARIANT / pkg):
        assert {p.name for p in base.iterdir()} >= {"__init__.py", "layers.py", "_kernels"}
        assert (base / "_kernels" / "L1_rms_norm.py").read_text().count("# fastkernels: include") == 0  # spliced
    meta = json.loads((exported / "build" / VARIANT / "metadata.json").read_text())
    assert meta["name"] == "fastkernels-library" and meta["digest"]["algorithm"] == "sha256"
    assert f"{pkg}/layers.py" in meta["digest"]["files"]
    layers = ast.parse((exported / "torch-ext" / pkg / "layers.py").read_text())
    classes = {n.name: n for n in layers.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"RMSNorm", "SiluAndMul", "SiluAndMulMLP", "rotary_pos_emb"}
    for cls in classes.values():  # what `kernels` accepts: no constructor, nothing but forward
        assert [n.name for n in cls.body if isinstance(n, ast.FunctionDef)] == ["forward"]
    card = (exported / "README.md").read_text()
    assert "Not measured" in card and "L1/attention" in card and "fastkernels.patch" in card
    assert "torch " in card and "transformers " in card  # versions
    assert (exported / "tests" / f"test_{pkg}.py").is_file()
    bench = (exported / "benchmarks" / f"benchmark_{pkg}.py").read_text()
    assert "class RMSNormBenchmark(Benchmark)" in bench and "class SiluAndMulBenchmark(Benchmark)" in bench


def test_kernels_loads_the_export_and_kernelize_matches(exported):
    """The issue's acceptance: a fresh Python loads the folder with `kernels`, kernelize puts our
    RMSNorm and SiLU-and-mul (and rotary) into a Llama, and its outputs match the unpatched model."""
    done = _python(["-c", KERNELIZE, str(exported)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "digest" not in done.stderr  # the files match the digest in metadata.json
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["norms_swapped"] and r["mlps_swapped"]
    # tiny Llama: 2 layers x 2 norms + the final norm; 2 MLPs; rotary once per attention layer
    assert r["calls"] == {"rms_norm": r["n_norms"], "silu_and_mul": r["n_mlps"], "apply_rotary": 2}, r
    assert r["n_norms"] == 5 and r["n_mlps"] == 2
    assert r["max_err"] <= 1e-4 * max(1.0, r["scale"]), r
    assert {"rms_norm", "silu_and_mul", "rotary_embedding", "attention"} <= set(r["ops"])


def test_exported_tests_pass(exported):
    """The repository's own tests (each layer against its reference) pass where it was written."""
    done = _python(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(exported / "tests")])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout


def _candidate(root: Path, op: str, text: str) -> Path:
    (root / "L1").mkdir(parents=True, exist_ok=True)
    (root / "L1" / f"{op}.py").write_text(text)
    return root


def test_layer_only_where_the_host_has_the_state(tmp_path):
    """A kernel class that keeps its epsilon as self.eps cannot run on an HF RMSNorm's state: it is
    exported as an operator, with the reason on the card, and no RMSNorm layer."""
    src = _candidate(tmp_path / "cand", "rms_norm", textwrap.dedent('''
        import torch
        from torch import nn

        class RMSNorm(nn.Module):
            def __init__(self, hidden_size, eps=1e-6):
                super().__init__()
                self.weight = nn.Parameter(torch.ones(hidden_size))
                self.eps = eps

            def forward(self, x):
                return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
    '''))
    _candidate(src, "silu_and_mul", (LIBRARY / "L1" / "silu_and_mul.py").read_text())
    result = export_kernels(src, tmp_path / "out")
    assert result.layers == ["SiluAndMul", "SiluAndMulMLP"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "RMSNorm.forward reads self.eps; the host module has self.variance_epsilon, self.weight" in card
    toml = (tmp_path / "out" / "build.toml").read_text()
    assert "[torch-noarch]" in toml and "[kernel." not in toml  # Triton only: a no-arch build


def test_card_carries_the_agent_summary(tmp_path):
    src = _candidate(tmp_path / "cand", "silu_and_mul", (LIBRARY / "L1" / "silu_and_mul.py").read_text())
    summary = {"model": "meta-llama/Llama-3.1-8B-Instruct", "level": 1, "tiny": False, "backend": "library",
               "passing": 1, "total": 1,
               "ops": [{"op": "silu_and_mul", "status": "accepted", "vs_eager": [1.8, 2.1], "vs_compile": [0.98, 1.02],
                        "roofline": 0.96, "timing_note": ""}],
               "e2e": {"passed": True, "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "weights": "random",
                       "token_match": 1.0, "token_match_noise": 1.0, "logit_rel_error": 0.004,
                       "speedup_decode": 1.36, "speedup_prefill": 1.1}}
    (src / "L1" / "summary.json").write_text(json.dumps(summary))
    result = export_kernels(src, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert result.measured and "Not measured" not in card
    assert "| silu_and_mul | accepted | 1.80-2.10x | 0.98-1.02x | 96% |" in card
    assert "NVIDIA H100 80GB HBM3" in card and "decode speedup 1.36x" in card


@pytest.mark.parametrize("case,expect", [
    ("missing", "no kernel folder at"),
    ("empty", "holds no kernels: expected L<level>/<op>.py"),
    ("nonempty", "exists and is not empty: pass --force"),
    ("force_foreign", "is not an earlier `fastkernels export`"),
    ("out_is_file", "is a file"),
    ("bad_name", "a kernel name is lowercase letters"),
])
def test_bad_input_fails_in_one_line(tmp_path, capsys, case, expect):
    src = _candidate(tmp_path / "cand", "silu_and_mul", (LIBRARY / "L1" / "silu_and_mul.py").read_text())
    out = tmp_path / "out"
    args = ["export", str(src), "--out", str(out)]
    if case == "missing":
        args[1] = str(tmp_path / "nowhere")
    elif case == "empty":
        (tmp_path / "empty" / "L1").mkdir(parents=True)
        (tmp_path / "empty" / "L1" / "notes.py").write_text("# not an operator\n")
        args[1] = str(tmp_path / "empty")
    elif case in ("nonempty", "force_foreign"):
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
        args += ["--force"] if case == "force_foreign" else []
    elif case == "out_is_file":
        out.write_text("")
    elif case == "bad_name":
        args += ["--name", "Bad_Name"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    if case in ("nonempty", "force_foreign"):
        assert (out / "precious.txt").read_text() == "keep me"


def test_force_replaces_an_earlier_export(tmp_path):
    src = _candidate(tmp_path / "cand", "silu_and_mul", (LIBRARY / "L1" / "silu_and_mul.py").read_text())
    out = tmp_path / "out"
    assert main(["export", str(src), "--out", str(out)]) == 0
    (out / "stale.txt").write_text("from before")
    assert main(["export", str(src), "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "build.toml").is_file()
