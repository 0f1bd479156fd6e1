"""Kernel launches as PyTorch operators: a piece shared by every library kernel file.

A file registers each of its launch paths as an operator (`_register_op`), so a patched model
runs under `torch.compile(fullgraph=True)` and CUDA graphs capture it:
- where Triton compiles (a GPU), through `torch.library.triton_op`: when torch.compile traces the
  operator, its body runs on fake tensors and launches its kernels through
  `torch.library.wrap_triton` (`_run`), so Inductor sees, compiles and launches the kernels itself;
- under the Triton interpreter (CPU), interpreted kernels cannot be captured into a graph, so the
  operator is opaque (`torch.library.custom_op`); its body is also its fake implementation, and
  launches nothing when traced (only its outputs' shapes and dtypes are needed there).

A file's public functions call the operator only while torch.compile traces them; eager calls
run the operator's body directly, without the dispatcher's custom-op path (11 us per call on a
CPU, torch 2.13; a Llama decode step makes ~165 library calls). Both run the same body.

Namespaces: `fk_` + 12 hex digits of the sha256 of the file's text, as the Hugging Face `kernels`
package names its ops by content, with `_1`, `_2`, ... when the same text is loaded again in one
process (the gate loads a candidate beside a baseline, a test reloads a file): torch.library takes
one definition per name, and each load's operator runs that load's module.

A library file splices it in where it has the line `# fastkernels: include ops`, and is served
whole, as one self-contained module (fastkernels.registry.tasks.kernel_source). This file is the
one copy to edit; what follows its `# fastkernels: piece` line is the piece.
"""

import torch

# fastkernels: piece
import hashlib
import os

from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.library import wrap_triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # read once: the hot path skips os.environ
_OP_NAMESPACE: list = []  # this load's operator namespace, fixed by its first operator


def _traced(t) -> bool:
    """t is a fake or functional tensor: torch.compile is tracing an operator's body (Dynamo's
    fake run, AOTAutograd's functional trace), nothing is launched for real."""
    return type(t) is not torch.Tensor and isinstance(t, (FakeTensor, FunctionalTensor))


def _run(kernel, grid, args: tuple, meta: dict) -> None:
    """kernel[grid](*args, **meta); when traced, the graph node Inductor compiles and launches (the
    interpreter's opaque operators launch nothing when traced)."""
    if _traced(args[0]):
        if not _INTERPRET:
            wrap_triton(kernel)[grid](*args, **meta)
        return
    kernel[grid](*args, **meta)


def _tune_and_run(tuned, grid, args: tuple, meta: dict | None = None) -> dict | None:
    """Launch through a triton.autotune kernel (the first call of a key times its configs and
    launches the best): the config it picked, to launch directly next time; None when traced
    (Inductor autotunes the same configs when it compiles the graph)."""
    if _traced(args[0]):
        _run(tuned, grid, args, meta or {})
        return None
    tuned[grid](*args, **(meta or {}))
    best = tuned.best_config
    return {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}


def _free_namespace(first_op: str) -> str:
    path = globals().get("__file__")
    text = open(path, "rb").read() if path and os.path.isfile(path) else __name__.encode()
    base = "fk_" + hashlib.sha256(text).hexdigest()[:12]
    ns, n = base, 0
    while hasattr(getattr(torch.ops, ns), first_op):  # this text was loaded before in this process
        n += 1
        ns = f"{base}_{n}"
    return ns


def _register_op(name: str, fn, fake=None):
    """`fn` (type-annotated: the schema is read from it) as the operator `<namespace>::name`; its
    OpOverload. `fake` makes it opaque everywhere (a body torch.compile cannot trace: a host sync),
    with `fake` computing its outputs' metadata."""
    if not _OP_NAMESPACE:
        _OP_NAMESPACE.append(_free_namespace(name))
    ns = _OP_NAMESPACE[0]
    if fake is None and not _INTERPRET:
        torch.library.triton_op(f"{ns}::{name}", fn, mutates_args=())
    else:
        op = torch.library.custom_op(f"{ns}::{name}", fn, mutates_args=())
        op.register_fake(fake or fn)
    return getattr(getattr(torch.ops, ns), name).default
