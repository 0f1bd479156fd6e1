"""Honest GPU timing: medians of `triton.testing.do_bench` (CUDA events, L2 flushed before every
repetition by do_bench's cache buffer) over a function that rotates through several input sets, so
neither the cache nor a kernel that memoises by address sees the same inputs twice in a row.

The timer functions are captured when this module is imported (before any candidate is), and
`replaced_timers()` says which of them a candidate has since swapped out.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

_ORIGINALS: dict[str, tuple[object, str, object]] = {}


def _capture() -> None:
    """Remember (owner, attribute, object) for every function a timing result depends on."""
    import torch

    entries = [(time, "perf_counter"), (time, "perf_counter_ns"), (time, "time"),
               (torch.cuda, "synchronize"), (torch.cuda, "Event"), (torch.cuda.Event, "record"),
               (torch.cuda.Event, "elapsed_time"), (torch.cuda.Event, "synchronize")]
    try:
        import triton.testing

        entries += [(triton.testing, "do_bench")]
    except ImportError:  # no triton on this platform: nothing of it to guard
        pass
    for owner, attr in entries:
        _ORIGINALS[f"{getattr(owner, '__name__', owner)}.{attr}"] = (owner, attr, getattr(owner, attr))


def replaced_timers() -> list[str]:
    """Names of the timing functions that are no longer the objects captured at import."""
    if not _ORIGINALS:
        _capture()
    return [name for name, (owner, attr, obj) in _ORIGINALS.items() if getattr(owner, attr, None) is not obj]


def _original(name: str):
    if not _ORIGINALS:
        _capture()
    return _ORIGINALS[name][2]


@dataclass
class TimingStats:
    median_ms: float
    p20_ms: float
    p80_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def bench_gpu(fn: Callable, arg_sets: Sequence[tuple], *, warmup_ms: float = 25, rep_ms: float = 100) -> TimingStats:
    """Time `fn(*args)` on the GPU, cycling through `arg_sets`; median and 20/80th percentiles."""
    do_bench = _original("triton.testing.do_bench")
    cycle = itertools.cycle(arg_sets)

    def call():
        fn(*next(cycle))

    q = do_bench(call, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8], return_mode="median")
    med, p20, p80 = (float(x) for x in q)
    return TimingStats(med, p20, p80)


def wall_ms(fn: Callable, *, repeat: int = 3) -> float:
    """Plain wall-clock median (for what is not a GPU kernel: compile times, job overheads)."""
    perf = _original("time.perf_counter")
    times = []
    for _ in range(repeat):
        t0 = perf()
        fn()
        times.append((perf() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


_capture()
