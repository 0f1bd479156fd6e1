"""Launching a Triton kernel with less host work: a piece shared by the library's L1 kernel files.

The first launch of an argument signature (what Triton specialises on: dtypes, 16-byte alignment,
int values) goes through Triton's JIT; later ones call the compiled kernel's launcher directly,
without Triton's per-call argument binding, specialisation key and cache lookup: host work that
bounds decode-sized launches. A caller that already knows its specialisation may pass its own key.

Eager calls only: under torch.compile the ops piece's `_run` hands the launch to Inductor (this
launcher reads data pointers, which a traced tensor has none of), and inside a CUDA graph capture
it launches on the capturing stream like any eager launch. It calls what the ops piece defines: a
file that includes it includes that too.

A library file splices it in where it has the line `# fastkernels: include launch`, and is served
whole, as one self-contained module (fastkernels.registry.tasks.kernel_source). This file is the
one copy to edit; what follows its `# fastkernels: piece` line is the piece.
"""

import torch
from triton import knobs

# fastkernels: piece
_COMPILED: dict = {}


def _hooked() -> bool:
    rt = knobs.runtime  # a profiler's launch hooks need Triton's own launch path
    return any(getattr(h, "calls", h) for h in (rt.launch_enter_hook, rt.launch_exit_hook))


def _launch(kernel, grid: tuple, args: tuple, meta: dict, key: tuple | None = None) -> None:
    """kernel[grid](*args, **meta), constexprs last in `meta` in signature order. The first launch of
    an argument signature (what Triton specialises on: dtypes, 16-byte alignment, int values) goes
    through Triton's JIT; later ones call the compiled kernel's launcher directly, without Triton's
    per-call argument binding, specialisation key and cache lookup (host work that bounds
    decode-sized launches)."""
    if _INTERPRET or _traced(args[0]):
        _run(kernel, grid, args, meta)
        return
    if key is None:
        key = (kernel, grid, *meta.values(),
               *[(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args])
    else:  # the caller's key already pins everything Triton specialises on
        key = (kernel, key)
    hit = _COMPILED.get(key)
    if hit is None or _hooked():
        compiled = kernel[grid](*args, **meta)
        if not (args[0].is_cuda and hasattr(compiled, "packed_metadata")):
            return
        if len(_COMPILED) > 4096:  # many prompt lengths: start over rather than grow without bound
            _COMPILED.clear()
        consts = tuple(meta[name] for name in kernel.arg_names[len(args):])
        _COMPILED[key] = (compiled, consts, args[0].device.index)
        return
    compiled, consts, dev = hit
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                 torch._C._cuda_getCurrentRawStream(dev), compiled.function, compiled.packed_metadata,
                 None, None, None, *args, *consts)
