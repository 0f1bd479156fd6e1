"""Building the raw CUDA of `--cuda-only` kernels: once per source, for the GPU's own architecture.

A `--cuda-only` kernel file is plain PyTorch: it compiles its CUDA C++ at import time with
`torch.utils.cpp_extension.load_inline(name=..., cpp_sources=..., cuda_sources=..., functions=...)`
and imports nothing of ours. The harness imports a candidate inside `cached_builds()`, which
routes those calls through `load_inline` below for the duration of the import:

- the build directory is `<cache>/<name>-<key>`, where the key hashes the sources, the functions,
  every flag, the target architecture, torch (version and CUDA), the Python ABI and the nvcc binary:
  the same kernel never compiles twice, in this process or any later one (ninja finds the objects
  and the .so up to date and the module loads in milliseconds), and two kernels that happen to
  share a `name` never overwrite each other's build;
- it builds for the GPU's own architecture, with the arch-specific target from Hopper on
  (`-gencode=arch=compute_90a,code=sm_90a` on an H100), unless the kernel passes its own arch flags;
- a failed build raises `CudaBuildError`, whose message is the compiler's own first errors with
  file and line (lines of the kernel file where the source string can be found there), not
  ninja's command lines: fit to send back to the LLM;
- every build is appended to `<cache>/builds.jsonl` (name, key, seconds, compiled or cached), so a
  benchmark can show that a second run compiled nothing.

The cache is `$FASTKERNELS_CACHE_DIR/cuda`, else `<user cache dir>/fastkernels/cuda`.
`preflight()` is the one-line answer for a machine that cannot do `--cuda-only` (no GPU, no nvcc,
no ninja). Importing this module costs nothing: torch is imported by the functions that need it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from fastkernels.errors import ResourceError

ARCH_ENV = "FASTKERNELS_CUDA_ARCH"  # e.g. "9.0a": build for this arch instead of the visible GPU's
CACHE_ENV = "FASTKERNELS_CACHE_DIR"
LOG_NAME = "builds.jsonl"
DEFAULT_NVCC = "/usr/local/cuda/bin/nvcc"  # where torch looks last, too
MAX_ERRORS = 5  # the first errors are the real ones; later ones mostly follow from them
CONTEXT_LINES = 3  # lines after an error (the source line and the caret the compiler prints)
# load_inline prepends these lines to the sources it writes (see torch.utils.cpp_extension):
# `#include <torch/extension.h>` to main.cpp, three includes to cuda.cu.
_PREPENDED = {"main.cpp": 1, "cuda.cu": 3}
_SOURCE_ARG = {"main.cpp": "cpp_sources", "cuda.cu": "cuda_sources"}


# ---- where, for what, with what ----------------------------------------------------------------

def cache_dir() -> Path:
    """Where builds live: $FASTKERNELS_CACHE_DIR/cuda, else the user cache dir's fastkernels/cuda."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("fastkernels")
    return Path(root) / "cuda"


def find_nvcc() -> str | None:
    """The nvcc torch will use: $CUDA_HOME/bin/nvcc, else nvcc on PATH, else /usr/local/cuda's."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return DEFAULT_NVCC if os.path.isfile(DEFAULT_NVCC) else None


def _gpu_present() -> bool:
    from fastkernels.sandbox import cuda_present

    return cuda_present()


def preflight(*, need_gpu: bool = True) -> None:
    """Raise ResourceError (one line, what to do) when this machine cannot build and run raw CUDA
    kernels: no GPU (unless need_gpu=False), no nvcc, no ninja."""
    if need_gpu and not _gpu_present():
        raise ResourceError("--cuda-only needs a CUDA GPU to build and run raw CUDA kernels, and this machine has "
                            "none; run it on a GPU machine, or drop --cuda-only to use Triton kernels (they run "
                            "under the interpreter here)")
    if find_nvcc() is None:
        raise ResourceError("--cuda-only needs nvcc (the CUDA toolkit) to compile kernels and none was found; "
                            "install the CUDA toolkit or set CUDA_HOME to its root")
    if shutil.which("ninja") is None:
        raise ResourceError("--cuda-only builds kernels with ninja and it is not on PATH; `pip install ninja`")


def target_arch() -> str:
    """The architecture to build for, as TORCH_CUDA_ARCH_LIST spells it ("9.0a" on an H100):
    $FASTKERNELS_CUDA_ARCH, else the current GPU's compute capability, with the arch-specific "a"
    target from 9.0 on (wgmma, setmaxnreg; an sm_90a binary runs on Hopper only, which is the GPU
    it was built on)."""
    forced = os.environ.get(ARCH_ENV)
    if forced:
        return forced.strip()
    import torch

    if not torch.cuda.is_available():
        raise ResourceError(f"no CUDA GPU to build CUDA kernels for; run on a GPU machine (or set {ARCH_ENV}=9.0a "
                            "to compile for an H100 without one)")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}" + ("a" if major >= 9 else "")


def arch_flags(arch: str) -> list[str]:
    """nvcc flags for one arch ("9.0a" -> -gencode=arch=compute_90a,code=sm_90a): machine code for
    that GPU only; no PTX for the driver to JIT at start."""
    m = re.fullmatch(r"(\d+)\.(\d+)([af]?)", arch)
    if not m:
        raise ValueError(f"bad CUDA arch {arch!r}: write it as major.minor, e.g. 9.0a or 8.0")
    num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
    return [f"-gencode=arch=compute_{num},code=sm_{num}"]


def _nvcc_identity() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        return "no-nvcc"
    st = os.stat(nvcc)
    return f"{os.path.realpath(nvcc)}:{st.st_size}:{int(st.st_mtime)}"


def _as_list(x) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def build_key(name: str, cpp_sources, cuda_sources, functions, flags: dict, arch: str) -> str:
    """sha256 of everything the built module depends on (hex)."""
    import torch

    parts = {
        "name": name,
        "cpp": _as_list(cpp_sources),
        "cuda": _as_list(cuda_sources),
        "functions": functions if isinstance(functions, (dict, type(None))) else _as_list(functions),
        "flags": {k: _as_list(v) if not isinstance(v, bool) else v for k, v in sorted(flags.items())},
        "arch": arch,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}",
        "nvcc": _nvcc_identity(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---- build errors ------------------------------------------------------------------------------

class CudaBuildError(RuntimeError):
    """A kernel's CUDA/C++ did not compile or link. str(): the trimmed compiler errors; `.log`: all
    of ninja's output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


# nvcc/cudafe: "path/cuda.cu(12): error: ..."; gcc/clang: "path/main.cpp:12:5: error: ...";
# ptxas, the linker and nvcc itself: "ptxas error   : ...", "ld: ...", "nvcc fatal   : ...".
_DIAG = re.compile(r"^(?P<file>[^\s:()][^:()]*?)(?:\((?P<l1>\d+)\)|:(?P<l2>\d+)(?::\d+)?):\s*(?:catastrophic\s+)?"
                   r"(?P<kind>error|fatal error)\b\s*:?\s*(?P<msg>.*)$")
_TOOL_ERR = re.compile(r"^(?:ptxas|nvlink|nvcc|ld|/usr/bin/ld|collect2)[^:]*:?\s*(?:fatal|error)?\s*:.*"
                       r"|.*\bundefined reference to\b.*|.*cannot find -l\S+.*", re.I)
_NOISE = re.compile(r"^\[\d+/\d+\]\s|^FAILED:|^ninja:|^\S*(?:nvcc|c\+\+|g\+\+|clang\+\+)\s+-|"
                    r"^\d+ errors? detected in the compilation|^In file included from|^\s+from\s|"
                    r"^Error building extension|^compilation terminated")


def _where(file: str, line: int, sources: dict, prepended: dict) -> str:
    """'line N of the kernel file (cuda_sources line M)' for our generated files, else the header."""
    base = os.path.basename(file)
    if base not in _PREPENDED:
        return f"{base}:{line}"
    src_line = line - prepended.get(base, 0)
    arg = _SOURCE_ARG[base]
    located = sources.get(arg)
    if located is not None and src_line >= 1:
        path, first = located
        return f"line {first + src_line - 1} of {os.path.basename(path)} ({arg} line {src_line})"
    return f"{arg} line {src_line}" if src_line >= 1 else f"{base}:{line}"


def trim_build_log(log: str, *, name: str = "", sources: dict | None = None, implicit_headers: bool = True,
                   max_errors: int = MAX_ERRORS) -> str:
    """The compiler's first errors, each with where it is and the lines the compiler printed under
    it (source line, caret), without ninja's progress and command lines. `sources` maps
    "cuda_sources"/"cpp_sources" to (file, line where that string starts in the file), to point at
    lines of the kernel file; `implicit_headers=False` when load_inline was told no_implicit_headers
    (its files are then the sources line for line). Falls back to the last lines of the log when no
    error line is found."""
    sources = sources or {}
    prepended = _PREPENDED if implicit_headers else {}
    lines = log.replace("\r", "").splitlines()
    blocks: list[list[str]] = []
    total = 0
    i = 0
    while i < len(lines):
        ln = lines[i]
        m = _DIAG.match(ln.strip())
        tool = None if m else _TOOL_ERR.match(ln.strip())
        if not (m or tool):
            i += 1
            continue
        total += 1
        if len(blocks) < max_errors:
            if m:
                line_no = int(m.group("l1") or m.group("l2"))
                head = f"{_where(m.group('file'), line_no, sources, prepended)}: {m.group('kind')}: {m.group('msg').strip()}"
            else:
                head = ln.strip()
            block = [head]
            j = i + 1
            while j < len(lines) and len(block) <= CONTEXT_LINES:
                nxt = lines[j]
                if not nxt.strip() or _DIAG.match(nxt.strip()) or _TOOL_ERR.match(nxt.strip()) or _NOISE.match(nxt):
                    break
                if re.match(r"^\S+(?:\(\d+\)|:\d+(?::\d+)?):\s*(?:warning|note|remark)", nxt.strip()):
                    break
                block.append(nxt.rstrip())
                j += 1
            blocks.append(block)
        i += 1
    what = f"CUDA build of {name!r} failed" if name else "CUDA build failed"
    if not blocks:
        useful = [ln for ln in lines if ln.strip() and not _NOISE.match(ln)]
        tail = "\n".join(useful[-15:]) or "(the build printed nothing)"
        return f"{what}; the build's last lines:\n{tail}"
    shown = f"first {len(blocks)} of {total} errors" if total > len(blocks) else f"{total} error{'s' * (total > 1)}"
    return f"{what} ({shown}):\n" + "\n".join("\n".join(b) for b in blocks)


def _locate_sources(frame_file: str | None, cpp_sources, cuda_sources) -> dict:
    """Where each source string starts in the file that called load_inline (when it is written
    there as one literal), so errors can name lines of that file."""
    out = {}
    if not frame_file or not os.path.isfile(frame_file):
        return out
    try:
        text = Path(frame_file).read_text()
    except OSError:
        return out
    for arg, value in (("cpp_sources", cpp_sources), ("cuda_sources", cuda_sources)):
        items = _as_list(value)
        if len(items) != 1 or not items[0].strip():
            continue
        pos = text.find(items[0])
        if pos >= 0:
            out[arg] = (frame_file, text.count("\n", 0, pos) + 1)
    return out


# ---- the build ------------------------------------------------------------------------------

def _log_build(entry: dict) -> None:
    path = cache_dir() / LOG_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:  # one short line per write: appends do not interleave
            fh.write(json.dumps(entry) + "\n")
    except OSError:
        pass


def read_build_log(since: float = 0.0) -> list[dict]:
    """The builds recorded in the cache since `since` (a time.time()), oldest first."""
    path = cache_dir() / LOG_NAME
    out = []
    try:
        for ln in path.read_text().splitlines():
            try:
                entry = json.loads(ln)
            except ValueError:
                continue
            if entry.get("time", 0) >= since:
                out.append(entry)
    except OSError:
        pass
    return out


_torch_load_inline = None  # torch's own, captured before cached_builds() swaps it


def _original_load_inline():
    global _torch_load_inline
    if _torch_load_inline is None:
        import torch.utils.cpp_extension as ext

        if ext.load_inline is not load_inline:
            _torch_load_inline = ext.load_inline
    return _torch_load_inline


def load_inline(name, cpp_sources, cuda_sources=None, functions=None, extra_cflags=None, extra_cuda_cflags=None,
                extra_ldflags=None, extra_include_paths=None, build_directory=None, verbose=False, with_cuda=None,
                is_python_module=True, with_pytorch_error_handling=True, keep_intermediates=True, **kwargs):
    """torch.utils.cpp_extension.load_inline, cached by content and built for this GPU (see the
    module docstring). Same arguments and result; a failed build raises CudaBuildError. An explicit
    `build_directory` is honoured (then only ninja's own up-to-date check caches)."""
    original = _original_load_inline()
    cuda_flags = _as_list(extra_cuda_cflags)
    arch = "own"
    if cuda_sources and not any("arch" in f for f in cuda_flags):
        arch = target_arch()
        cuda_flags = cuda_flags + arch_flags(arch)
    flags = {"extra_cflags": extra_cflags, "extra_cuda_cflags": cuda_flags, "extra_ldflags": extra_ldflags,
             "extra_include_paths": extra_include_paths, "with_cuda": with_cuda, "is_python_module": is_python_module,
             "with_pytorch_error_handling": with_pytorch_error_handling,
             **{k: v for k, v in kwargs.items() if isinstance(v, (str, bool, int, list, tuple, type(None)))}}
    key = build_key(name, cpp_sources, cuda_sources, functions, flags, arch)
    directory = Path(build_directory) if build_directory else cache_dir() / f"{name}-{key[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    so = directory / f"{name}.so"
    caller = inspect.currentframe().f_back
    frame_file = caller.f_code.co_filename if caller is not None else None
    start = time.monotonic()
    # One builder per directory at a time; a flock dies with its process, unlike torch's own lock
    # file, which a build killed mid-way (a sandbox timeout) leaves behind for every later job to
    # wait on forever: holding the flock, that file is stale by definition.
    with open(str(directory) + ".flock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            os.remove(directory / "lock")
        before = so.stat().st_mtime_ns if so.exists() else None
        try:
            module = original(name, cpp_sources, cuda_sources=cuda_sources, functions=functions,
                              extra_cflags=extra_cflags, extra_cuda_cflags=cuda_flags, extra_ldflags=extra_ldflags,
                              extra_include_paths=extra_include_paths, build_directory=str(directory),
                              verbose=verbose, with_cuda=with_cuda, is_python_module=is_python_module,
                              with_pytorch_error_handling=with_pytorch_error_handling,
                              keep_intermediates=keep_intermediates, **kwargs)
        except RuntimeError as exc:
            text = str(exc)
            if not text.startswith("Error building extension"):
                raise
            seconds = time.monotonic() - start
            _log_build({"name": name, "key": key[:16], "arch": arch, "seconds": round(seconds, 3),
                        "compiled": True, "ok": False, "pid": os.getpid(), "time": time.time()})
            located = _locate_sources(frame_file, cpp_sources, cuda_sources)
            trimmed = trim_build_log(text, name=name, sources=located,
                                     implicit_headers=not kwargs.get("no_implicit_headers", False))
            raise CudaBuildError(trimmed, log=text) from None
        except OSError as exc:
            if "CUDA_HOME" in str(exc):  # torch found no CUDA toolkit
                import torch

                if torch.version.cuda is None:
                    raise ResourceError(f"this torch ({torch.__version__}) is a CPU-only build and cannot build CUDA "
                                        "kernels; install a CUDA build of torch") from None
                raise ResourceError("no CUDA toolkit (nvcc) found to compile the kernel's CUDA; install it or set "
                                    "CUDA_HOME to its root") from None
            raise
        except BaseException:
            # Built but not loadable (an ImportError, say): the build still counts, so log it.
            after = so.stat().st_mtime_ns if so.exists() else None
            _log_build({"name": name, "key": key[:16], "arch": arch, "seconds": round(time.monotonic() - start, 3),
                        "compiled": before is None or after != before, "ok": False, "loaded": False,
                        "pid": os.getpid(), "time": time.time()})
            raise
        after = so.stat().st_mtime_ns if so.exists() else None
    seconds = time.monotonic() - start
    compiled = before is None or after != before
    _log_build({"name": name, "key": key[:16], "arch": arch, "seconds": round(seconds, 3), "compiled": compiled,
                "ok": True, "pid": os.getpid(), "time": time.time()})
    return module


@contextlib.contextmanager
def cached_builds():
    """Within this block, torch.utils.cpp_extension.load_inline is the cached builder above (a
    kernel file that does `from torch.utils.cpp_extension import load_inline` at import gets it).
    Used around importing a candidate; nothing changes for code outside the block."""
    try:
        import torch.utils.cpp_extension as ext
    except ImportError:  # no torch: nothing to route
        yield
        return
    original = _original_load_inline()
    ext.load_inline = load_inline
    try:
        yield
    finally:
        ext.load_inline = original


def describe_build_error(exc: BaseException) -> str | None:
    """The trimmed message when `exc` (or what it was raised from) is a CUDA build failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CudaBuildError):
            return str(exc)
        if isinstance(exc, RuntimeError) and str(exc).startswith("Error building extension"):
            return trim_build_log(str(exc))
        exc = exc.__cause__ or exc.__context__
    return None
