"""--cuda-only: the cached CUDA builder, the raw CUDA library kernels, and the no-GPU answers.

What runs here on a CPU machine with nvcc (CUDA 13) and the CPU build of torch:
- the library kernels' CUDA sources compile for sm_90a with nvcc (no spills), and their C++
  halves pass a syntax check against torch's headers (`slow`: torch/extension.h is heavy);
- the builder, through torch's real load_inline, ninja and nvcc, builds a small module, loads
  it, and a second process loads the same build without compiling; a broken kernel comes back as
  the compiler's own first error pointing at a line of this file;
- without a GPU (or nvcc), --cuda-only answers in one line, and the library's CUDA files pass the
  static checks of --cuda-only.
The CPU build of torch has no CUDA libraries and leaves CUDA_HOME unset: the build tests point
CUDA_HOME at the nvcc found here and link a module that needs nothing of torch's CUDA libraries.
Running the library kernels needs the GPU (benchmarks/cuda_library.py).
"""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastkernels.agent.llm.base import LLMError
from fastkernels.agent.llm.library import LibraryBackend, library_kernel_path
from fastkernels.agent.prompts import build_generation_prompt, build_retry_prompt
from fastkernels.errors import ResourceError
from fastkernels.gpu import cuda_build
from fastkernels.judge.gate import kernel_names
from fastkernels.judge.validate import static_check
from fastkernels.registry.tasks import baseline_dir, build_spec, library_dir

CUDA_OPS = ("rms_norm", "add_rms_norm", "silu_and_mul", "rotary_embedding", "embedding")
# Kernel instantiations per file: fp32, bf16, fp16, each 16-byte and one-element (embedding copies
# bytes: 16-byte, 4-byte and 2-byte chunks).
INSTANCES = {"embedding": 3}
NVCC = cuda_build.find_nvcc()
# The toolkit root (what CUDA_HOME would be): nvcc on PATH may be a wrapper script elsewhere.
CUDA_ROOT = (str(Path(cuda_build.DEFAULT_NVCC).parent.parent) if os.path.isfile(cuda_build.DEFAULT_NVCC)
             else str(Path(os.path.realpath(NVCC)).parent.parent) if NVCC else None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed here")
# torch's own flags for CUDA sources (torch.utils.cpp_extension.COMMON_NVCC_FLAGS).
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]


def _string_constant(path: Path, name: str) -> str:
    """A module-level string constant of a kernel file, read without importing it (importing builds)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


def _cuda_file(op: str) -> Path:
    path = library_kernel_path(1, op, cuda_only=True)
    assert path is not None, f"no CUDA library kernel for {op}"
    return path


# ---- the library's CUDA kernels --------------------------------------------------------------------


@needs_nvcc
@pytest.mark.parametrize("op", CUDA_OPS)
def test_library_cuda_source_compiles_for_sm90a_without_spills(op, tmp_path):
    src = tmp_path / f"{op}.cu"
    src.write_text(_string_constant(_cuda_file(op), "CUDA_SRC"))
    proc = subprocess.run([NVCC, "-O3", *cuda_build.arch_flags("9.0a"), "-std=c++17", *TORCH_NVCC_FLAGS,
                           "-Xptxas", "-v", "-c", str(src), "-o", str(tmp_path / f"{op}.o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", proc.stderr)
    assert len(entries) == INSTANCES.get(op, 6), proc.stderr[-2000:]
    # Everything stays in registers, except that the one-element fallback of the 16-bit types may
    # spill a word (rows of an odd width only; every model shape takes the 16-byte form).
    props = re.findall(r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores",
                       proc.stderr)
    assert len(props) == len(entries), proc.stderr[-2000:]
    spilled = [(fn, int(n)) for fn, _, n in props if int(n) and not re.search(r"(6__half|13__nv_bfloat16)Li1EE", fn)]
    assert not spilled, spilled
    # The profiler check finds the kernel by the __global__ name the file declares.
    assert all(any(k in e for k in kernel_names(_cuda_file(op).read_text())) for e in entries)


@needs_nvcc
@pytest.mark.slow
def test_library_cpp_sources_pass_a_syntax_check_against_torch_headers(tmp_path):
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    # The CPU wheel lacks the one header CUDA builds generate (c10/cuda/impl/cuda_cmake_macros.h).
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes_dirs = [str(tmp_path / "stub"), *include_paths(), str(Path(CUDA_ROOT) / "include"),
                     sysconfig.get_paths()["include"]]
    # One translation unit (torch/extension.h is the cost): the includes first, each file's C++ in
    # its own namespace, and the bindings load_inline would generate for each.
    includes, bodies, defs = ["#include <torch/extension.h>"], [], []
    for i, op in enumerate(CUDA_OPS):
        code = _cuda_file(op).read_text()
        fn = next(ast.literal_eval(kw.value)[0] for node in ast.walk(ast.parse(code))
                  if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_inline"
                  for kw in node.keywords if kw.arg == "functions")
        cpp = _string_constant(_cuda_file(op), "CPP_SRC").splitlines()
        includes += [ln for ln in cpp if ln.startswith("#include")]
        bodies.append(f"namespace op{i} {{\n" + "\n".join(ln for ln in cpp if not ln.startswith("#include")) + "\n}")
        defs.append(f'  m.def("{fn}", torch::wrap_pybind_function(op{i}::{fn}), "{fn}");')
    src = tmp_path / "main.cpp"
    src.write_text("\n".join(dict.fromkeys(includes)) + "\n" + "\n".join(bodies)
                   + "\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n" + "\n".join(defs) + "\n}\n")
    cmd = ["c++", "-std=c++17", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=fk_check", "-DTORCH_API_INCLUDE_EXTENSION_H",
           *[a for inc in includes_dirs for a in ("-isystem", inc)], str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("op", CUDA_OPS)
def test_library_cuda_files_pass_the_cuda_only_static_checks_and_keep_the_contract(op):
    code = _cuda_file(op).read_text()
    spec = build_spec(1, op, "meta-llama/Llama-3.1-8B-Instruct", tiny=True)
    assert static_check(code, spec.class_name, cuda_only=True) is None
    assert "import triton" not in code and "fastkernels" not in code

    def signatures(source):
        cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == spec.class_name)
        return {f.name: ast.unparse(f.args) for f in cls.body if isinstance(f, ast.FunctionDef)
                and f.name in ("__init__", "forward")}

    assert signatures(code) == signatures((baseline_dir(1) / f"{op}.py").read_text())


def test_static_check_still_rejects_torch_compute_in_a_cuda_forward():
    code = _cuda_file("silu_and_mul").read_text().replace(
        "return _ext.silu_and_mul(gate, up)", "return _ext.silu_and_mul(gate, up).float()")
    bad = static_check(code, "SiluAndMul", cuda_only=True)
    assert bad is not None and ".float(...)" in bad.error


def test_library_backend_serves_cuda_kernels_for_cuda_only_prompts():
    spec = build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True)
    chunks = []
    reply = LibraryBackend().generate(build_generation_prompt(spec, cuda_only=True), chunks.append, op=spec, attempt=1)
    assert reply.origin == "library" and "cuda/rms_norm.py" in reply.text and "load_inline" in reply.text
    assert "".join(chunks) == reply.text
    retry = build_retry_prompt(spec, "class RMSNorm: ...", "some error", cuda_only=True, attempt=2)
    assert "cuda/rms_norm.py" in LibraryBackend().generate(retry, chunks.append, op=spec, attempt=2).text
    triton = LibraryBackend().generate(build_generation_prompt(spec, cuda_only=False), chunks.append, op=spec, attempt=1)
    assert "import triton" in triton.text and "load_inline" not in triton.text
    # No raw CUDA attention in the library: said at once (fatal: retrying cannot help), not a baseline
    # that --cuda-only would reject five times.
    attention = build_spec(1, "attention", "meta-llama/Llama-3.1-8B-Instruct", tiny=True)
    assert not (library_dir(1) / "cuda" / "attention.py").exists()
    with pytest.raises(LLMError) as err:
        LibraryBackend().generate(build_generation_prompt(attention, cuda_only=True), chunks.append, op=attention,
                                  attempt=1)
    assert err.value.fatal and "no raw CUDA kernel for attention" in str(err.value)


# ---- no GPU, no nvcc ---------------------------------------------------------------------------


def test_preflight_without_a_gpu_or_nvcc_says_so_in_one_line(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this machine has
    with pytest.raises(ResourceError) as err:
        cuda_build.preflight()
    assert "needs a CUDA GPU" in str(err.value) and "\n" not in str(err.value)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(cuda_build, "DEFAULT_NVCC", "/nonexistent/nvcc")
    with pytest.raises(ResourceError) as err:
        cuda_build.preflight(need_gpu=False)
    assert "needs nvcc" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["check", "tasks/library/L1/cuda/rms_norm.py", "--level", "1", "--cuda-only"],
    ["agent", "--level", "1", "--cuda-only", "--llm-model", "library", "--no-tracking", "--out", "{tmp}"],
])
def test_cli_cuda_only_without_a_gpu_is_one_line_and_exit_2(argv, monkeypatch, capsys, tmp_path):
    from fastkernels.cli import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    code = main([a.replace("{tmp}", str(tmp_path / "out")) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: --cuda-only needs a CUDA GPU") and len(err.splitlines()) <= 2  # rich may wrap
    assert not (tmp_path / "out").exists()  # stopped before any work


# ---- the builder: real load_inline, ninja and nvcc -------------------------------------------------

# A module that needs nothing of torch's CUDA libraries (the CPU wheel has none): a kernel, a host
# launcher and a bare Python module init. no_implicit_headers keeps torch's headers out of both.
BUILD_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch.utils.cpp_extension as ext
    from fastkernels.gpu import cuda_build
    if ext.CUDA_HOME is None:  # the CPU wheel of torch does not look for a toolkit
        ext.CUDA_HOME = sys.argv[1]
    NAME = "fk_cache_probe"
    CUDA = "__global__ void fk_probe_kernel(float* x) { x[threadIdx.x] *= 2.0f; }\\n" \\
           "void fk_probe_launch(float* x, cudaStream_t s) { fk_probe_kernel<<<1, 32, 0, s>>>(x); }\\n"
    CPP = ("#include <Python.h>\\n"
           "static struct PyModuleDef fk_def = {PyModuleDef_HEAD_INIT, \\"" + NAME + "\\", nullptr, -1, nullptr};\\n"
           "PyMODINIT_FUNC PyInit_" + NAME + "(void) { return PyModule_Create(&fk_def); }\\n")
    with cuda_build.cached_builds():
        module = ext.load_inline(name=NAME, cpp_sources=CPP, cuda_sources=CUDA, no_implicit_headers=True,
                                 extra_ldflags=["-Wl,--as-needed"])
    print(json.dumps({"module": module.__name__, "file": module.__file__, "log": cuda_build.read_build_log()}))
''')


@pytest.fixture
def build_env(tmp_path, monkeypatch):
    """FASTKERNELS_CACHE_DIR in tmp, an H100 target, and empty stand-ins for the torch CUDA libraries
    that torch's link line names (-lc10_cuda -ltorch_cuda; --as-needed leaves them out of the .so)."""
    if NVCC is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed here")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for lib in ("c10_cuda", "torch_cuda"):
        subprocess.run(["cc", "-shared", "-o", str(stubs / f"lib{lib}.so"), "-x", "c", "/dev/null"], check=True)
    env = {"FASTKERNELS_CACHE_DIR": str(tmp_path / "cache"), cuda_build.ARCH_ENV: "9.0a",
           "LIBRARY_PATH": str(stubs), "MAX_JOBS": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **env}


def _build_in_child(env) -> dict:
    proc = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, CUDA_ROOT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_kernel_compiles_once_and_a_second_process_loads_the_cached_build(build_env, tmp_path):
    first = _build_in_child(build_env)
    second = _build_in_child(build_env)
    assert first["module"] == second["module"] == "fk_cache_probe" and first["file"] == second["file"]
    # Built under the cache dir, in a folder named by the content key, for sm_90a.
    build_dir = Path(first["file"]).parent
    assert build_dir.parent == tmp_path / "cache" / "cuda" and re.fullmatch(r"fk_cache_probe-[0-9a-f]{16}", build_dir.name)
    assert "-gencode=arch=compute_90a,code=sm_90a" in (build_dir / "build.ninja").read_text()
    built, cached = first["log"][-1], second["log"][-1]
    assert built["compiled"] and built["ok"]
    assert not cached["compiled"] and cached["ok"] and cached["key"] == built["key"]
    # Measured here: 0.77 s to build (nvcc + link, no torch headers), 0.01 s to load the cached build.
    assert cached["seconds"] < min(0.5, built["seconds"]), (built, cached)  # ninja found it all up to date


def test_a_broken_kernel_comes_back_as_the_compilers_first_error_at_a_line_of_this_file(build_env):
    import torch.utils.cpp_extension as ext

    broken = """
__global__ void fk_broken_kernel(float* x) {
  x[threadIdx.x] = undefined_thing * 2.0f;
}
"""
    with pytest.MonkeyPatch.context() as mp:
        if ext.CUDA_HOME is None:  # the CPU wheel of torch does not look for a toolkit
            mp.setattr(ext, "CUDA_HOME", CUDA_ROOT)
        with pytest.raises(cuda_build.CudaBuildError) as err:
            cuda_build.load_inline(name="fk_broken", cpp_sources="int fk_unused() { return 0; }", cuda_sources=broken,
                                   no_implicit_headers=True, is_python_module=False)
    message = str(err.value)
    source_line = next(i for i, ln in enumerate(Path(__file__).read_text().splitlines(), 1) if "undefined_thing * 2.0f" in ln)
    # no_implicit_headers: cuda.cu is the source as written, line for line.
    assert f"line {source_line} of test_cuda_build.py (cuda_sources line 3): error: identifier \"undefined_thing\" is undefined" in message, message
    assert "ninja" not in message and "-gencode" not in message and len(message.splitlines()) <= 6, message
    assert "undefined_thing" in err.value.log and "ninja" in err.value.log  # the full log is kept beside it
    entry = cuda_build.read_build_log()[-1]
    assert entry["name"] == "fk_broken" and entry["ok"] is False


def test_trim_keeps_gcc_errors_with_their_context_and_drops_command_lines(tmp_path):
    src = tmp_path / "main.cpp"
    src.write_text("#include <vector>\nint f() {\n  return missing_name + 1;\n}\n")
    proc = subprocess.run(["c++", "-c", str(src), "-o", str(tmp_path / "main.o")], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode != 0
    log = (f"Error building extension 'fk_x': [1/2] c++ -MMD -c {src} -o main.o\nFAILED: main.o\n"
           f"c++ -MMD -c {src} -o main.o\n{proc.stderr}ninja: build stopped: subcommand failed.\n")
    trimmed = cuda_build.trim_build_log(log, name="fk_x")
    # main.cpp: load_inline's one implicit include is taken off, so the line is the cpp_sources line.
    assert "cpp_sources line 2: error: 'missing_name' was not declared in this scope" in trimmed, trimmed
    assert "return missing_name + 1;" in trimmed  # the source line the compiler printed
    assert "FAILED" not in trimmed and "-MMD" not in trimmed and "ninja" not in trimmed


# ---- on a GPU: the library's CUDA kernels pass the agent's gate ---------------------------------


def _needs_gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: raw CUDA kernels build and run there only")


# Every registry width: Llama-3.1-8B at tiny shapes (every op), then full shapes of Llama-3.1-8B
# (hidden 4096, head_dim 128, decode = 1 token), Qwen2.5-7B (hidden 3584, 7-way GQA), Llama-3.2-1B
# (hidden 2048, head_dim 64) and Qwen3-8B (the 128-wide per-head q/k norm).
GPU_CASES = ([("meta-llama/Llama-3.1-8B-Instruct", op, True) for op in CUDA_OPS]
             + [(m, op, False) for m in ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
                                          "meta-llama/Llama-3.2-1B-Instruct")
                for op in ("rms_norm", "add_rms_norm", "silu_and_mul", "rotary_embedding")]
             + [("Qwen/Qwen3-8B", "rms_norm", False)])


@pytest.mark.gpu
@pytest.mark.parametrize("model,op,tiny", GPU_CASES)
def test_library_cuda_kernel_passes_validation_and_the_cuda_only_unit_check_on_the_gpu(model, op, tiny):
    from fastkernels.judge.gate import run_unit
    from fastkernels.judge.validate import validate_kernel

    _needs_gpu()
    code = _cuda_file(op).read_text()
    spec = build_spec(1, op, model, tiny=tiny)
    result = validate_kernel(code, spec.class_name, spec=spec, cuda_only=True)
    assert result.ok, result.error
    # Correctness in every shape and dtype, its own kernel seen by the profiler, no framework compute.
    report = run_unit(spec, code, seeds=2, timing=False, cuda_only=True)
    assert report.passed, report.failure_message()


@pytest.mark.gpu
def test_a_broken_candidate_gets_the_trimmed_build_error_from_validation_on_the_gpu():
    from fastkernels.judge.validate import validate_kernel

    _needs_gpu()
    code = _cuda_file("silu_and_mul").read_text().replace("const float x = to_float(g.v[j]);",
                                                          "const float x = to_float(g.v[j]) + not_declared;")
    result = validate_kernel(code, "SiluAndMul", cuda_only=True)
    line = next(i for i, ln in enumerate(code.splitlines(), 1) if "not_declared" in ln)
    assert not result.ok and result.stage == "import"
    assert f"line {line} of candidate_SiluAndMul.py" in result.error and "not_declared" in result.error, result.error
    assert "ninja" not in result.error and len(result.error.splitlines()) <= 8, result.error
