"""Honest GPU timing.

`compare(subjects, arg_sets)` is the unit benchmark's stopwatch: several implementations of one
operator, warmed up, then timed interleaved call by call (so a drift of the machine lands on all of
them alike) with inputs rotated and L2 flushed before every call, as device time per call (the GPU
held by a spin kernel while a batch is enqueued, so Python's launch cost never shows) and as wall
time per call (what an eager caller waits for, launch cost included). A shape whose wall time is
well above its device time is launch-bound, and says so.

`bench_gpu` (medians of `triton.testing.do_bench` over rotating inputs) stays for large single
kernels (the device ceilings), where launch cost is negligible.

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
               (torch.cuda.Event, "elapsed_time"), (torch.cuda.Event, "synchronize"),
               (torch.cuda.Event, "query")]
    if hasattr(torch.cuda, "_sleep"):
        entries.append((torch.cuda, "_sleep"))
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


# ---- interleaved device and wall timing (the unit benchmark's stopwatch) ----------------------
#
# Why not do_bench for small shapes: do_bench enqueues (L2 flush, start event, fn, end event) per
# repetition without waiting. When issuing fn from Python takes longer than the GPU needs for the
# flush plus fn (a decode-sized op: ~9 eager launches of a few us each against a 256 MB memset),
# the GPU idles between fn's kernels and the events time the host's launch loop, minus however
# much of it hid behind the flush. That difference of two similar numbers is what gave a baseline
# timed against itself 0.46x (H100, add_rms_norm decode). Here the GPU is held by a spin kernel
# while a whole batch of calls is enqueued, so every call runs back to back on the device; a batch
# is kept only if the spin was still running when the host finished enqueuing it (checked with an
# event, not assumed). What the host costs is measured separately, as wall time per call.

FLUSH_BYTES = 256 * 2**20  # as do_bench's cache buffer; 5x the H100's 50 MB L2
LAUNCH_BOUND_RATIO = 1.5  # wall per call over device time per call above this: the host decides


@dataclass
class Stats:
    """Summary of one subject's samples (milliseconds). `iqm`, the mean of the middle half, is the
    figure the unit benchmark reports: as robust to outliers as the median, but not stuck on the
    event timer's steps (~0.5-1 us: a 3 us kernel's median lands on one step or the next, so two
    identical kernels could read 0.67x or 1.5x; their IQMs agree to a few percent)."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    n: int
    iqm: float = 0.0

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        xs = sorted(float(x) for x in samples)
        if not xs:
            raise ValueError("no samples")
        k = len(xs) // 4
        mid = xs[k:len(xs) - k] or xs
        return cls(_quantile(xs, 0.5), _quantile(xs, 0.25), _quantile(xs, 0.75), xs[0], xs[-1], len(xs),
                   sum(mid) / len(mid))

    def to_dict(self) -> dict:
        return asdict(self)


def _quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values."""
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the subjects in each round: every subject goes first equally often and, for two
    subjects, rounds alternate AB, BA, AB... so a drift of the machine (clocks, temperature) during
    the measurement lands on all of them alike."""
    k = len(names)
    return [list(names[r % k:]) + list(names[:r % k]) for r in range(rounds)]


class CudaQueue:
    """The device operations the interleaved timer needs, on the current CUDA stream, through the
    timer functions captured at import (a candidate that replaces them is caught separately)."""

    def __init__(self) -> None:
        import torch

        self._event = _original("torch.cuda.Event")
        self._record = _original("Event.record")
        self._elapsed = _original("Event.elapsed_time")
        self._sync = _original("torch.cuda.synchronize")
        self._perf = _original("time.perf_counter")
        self._query = _original("Event.query")
        self.buffer = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
        self.can_hold = "torch.cuda._sleep" in _ORIGINALS  # a torch without the spin kernel: events only
        if not self.can_hold:
            return
        self._spin = _original("torch.cuda._sleep")
        # cycles of the spin kernel per millisecond, measured once
        cycles = 2_000_000
        self.sync()
        a = self.event()
        self._spin(cycles)
        b = self.event()
        self.sync()
        self.cycles_per_ms = cycles / max(self.elapsed_ms(a, b), 1e-3)
        self.sync()

    def event(self):
        e = self._event(enable_timing=True)
        self._record(e)
        return e

    def elapsed_ms(self, a, b) -> float:
        return float(self._elapsed(a, b))

    def done(self, e) -> bool:
        return bool(self._query(e))

    def flush(self) -> None:
        self.buffer.zero_()

    def hold(self, ms: float) -> None:
        self._spin(max(1, int(ms * self.cycles_per_ms)))

    def sync(self) -> None:
        self._sync()

    def now(self) -> float:
        return self._perf()


class HostQueue:
    """The stopwatch's operations on the host clock, for a machine without a GPU: events are clock
    readings, nothing is held or flushed. Its figures say how long the interpreter took, nothing
    about a GPU: it exists so that the timing protocol (who times what, which outputs are checked)
    runs in the CPU test suite."""

    can_hold = False

    def __init__(self) -> None:
        self._perf = _original("time.perf_counter")

    def event(self):
        return self._perf()

    def elapsed_ms(self, a, b) -> float:
        return (b - a) * 1e3

    def done(self, e) -> bool:
        return True

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def now(self) -> float:
        return self._perf()


_QUEUE = None


def default_queue():
    """One queue per process: a CudaQueue (its flush buffer and spin calibration are reused), or on
    a machine without CUDA the HostQueue."""
    global _QUEUE
    if _QUEUE is None:
        import torch

        _QUEUE = CudaQueue() if torch.cuda.is_available() else HostQueue()
    return _QUEUE


def _fresh(args: tuple, bump) -> tuple:
    """The call's inputs with every tensor's version counter moved on (no kernel, ~0.2 us each): to
    a kernel they are new tensors, so a result cache keyed on the tensor and its version never hits.
    Every subject pays it alike."""
    bump(_tensors(args))
    return args


def _tensors(obj) -> list:
    """The tensors in a call's arguments, nested lists (per-layer caches) included."""
    if hasattr(obj, "_version"):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    return []


def _keeper(keep: dict | None, name: str):
    """Where a subject's last output for each input set goes (`keep[name][set index]`), or None."""
    return None if keep is None else keep.setdefault(name, {})


def wall_per_call(subjects: dict[str, Callable], arg_sets: Sequence[tuple], queue, *, rounds: int = 7,
                  calls: int = 10, keep: dict | None = None) -> dict[str, Stats]:
    """Wall time per call (ms) of `calls` back-to-back calls with rotating inputs and no flush,
    synchronised at both ends, in interleaved rounds: what a caller that issues the op from Python
    waits for, launch overhead included. `keep`: {} to collect each subject's last output per input
    set (every subject stores them alike)."""
    from torch.autograd.graph import increment_version

    out: dict[str, list[float]] = {n: [] for n in subjects}
    n = len(arg_sets)
    for r, order in enumerate(rotations(list(subjects), rounds)):
        for name in order:
            fn, kept = subjects[name], _keeper(keep, name)
            queue.sync()
            t0 = queue.now()
            for i in range(calls):
                j = (r * calls + i) % n
                y = fn(*_fresh(arg_sets[j], increment_version))
                if kept is not None:
                    kept[j] = y
            queue.sync()
            out[name].append((queue.now() - t0) * 1e3 / calls)
    return {n: Stats.of(v) for n, v in out.items()}


def device_per_call(subjects: dict[str, Callable], arg_sets: Sequence[tuple], queue, *, samples: int = 60,
                    batch: int = 8, host_ms: dict[str, float] | None = None, tries: int = 6,
                    keep: dict | None = None) -> tuple[dict[str, Stats], str]:
    """Device time per call (ms): L2 flushed before every call, inputs rotated, the subjects
    interleaved call by call, each batch enqueued behind a spin kernel so the host's launch cost
    never shows (see the note above). `host_ms`: an upper bound of each subject's host cost per call
    (its wall time per call), to size the spin. Returns ({name: Stats}, method): method says
    "device" when every batch ran behind the spin, "events" when a subject blocks the host (it
    synchronises inside forward) and the fallback timed each call with events only."""
    from torch.autograd.graph import increment_version

    names = list(subjects)
    host_ms = host_ms or {}
    if not getattr(queue, "can_hold", True):
        return _events_only(subjects, arg_sets, queue, samples, keep), "events"
    got: dict[str, list[float]] = {n: [] for n in names}
    slack = 2.0
    per = max(1, batch)
    rounds = 0
    failures = 0
    while min(len(v) for v in got.values()) < samples:
        order = names[rounds % len(names):] + names[:rounds % len(names)]
        rounds += 1
        calls = [(order[j % len(order)], (rounds * per + j) % len(arg_sets)) for j in range(per * len(order))]
        enqueue_ms = sum(host_ms.get(n, 1.0) + 0.05 for n, _ in calls)  # + the flush's own launch
        queue.sync()
        queue.hold(slack * enqueue_ms + 0.5)
        go = queue.event()
        marks = []
        for name, i in calls:
            queue.flush()
            args = _fresh(arg_sets[i], increment_version)
            a = queue.event()
            y = subjects[name](*args)
            b = queue.event()
            marks.append((name, a, b))
            if keep is not None:
                _keeper(keep, name)[i] = y
        ahead = not queue.done(go)  # the spin outlasted the enqueueing: every call ran back to back
        queue.sync()
        if not ahead:
            failures += 1
            if failures >= tries:
                return _events_only(subjects, arg_sets, queue, samples, keep), "events"
            slack *= 2
            per = max(1, per // 2)  # a full launch queue blocks the host too
            continue
        for name, a, b in marks:
            got[name].append(queue.elapsed_ms(a, b))
    return {n: Stats.of(v) for n, v in got.items()}, "device"


def _events_only(subjects, arg_sets, queue, samples, keep=None) -> dict[str, Stats]:
    from torch.autograd.graph import increment_version

    got: dict[str, list[float]] = {n: [] for n in subjects}
    for r, order in enumerate(rotations(list(subjects), samples)):
        for name in order:
            queue.flush()
            i = r % len(arg_sets)
            args = _fresh(arg_sets[i], increment_version)
            a = queue.event()
            y = subjects[name](*args)
            b = queue.event()
            queue.sync()
            got[name].append(queue.elapsed_ms(a, b))
            if keep is not None:
                _keeper(keep, name)[i] = y
    return {n: Stats.of(v) for n, v in got.items()}


@dataclass
class Comparison:
    """Interleaved timing of several subjects on the same inputs."""

    device: dict[str, Stats]
    wall: dict[str, Stats]
    method: str

    def launch_bound(self, name: str) -> bool:
        """Issuing a call from Python takes longer than the GPU needs to run it."""
        return self.wall[name].iqm > LAUNCH_BOUND_RATIO * self.device[name].iqm

    def to_dict(self) -> dict:
        return {"method": self.method, "device": {k: v.to_dict() for k, v in self.device.items()},
                "wall": {k: v.to_dict() for k, v in self.wall.items()},
                "launch_bound": {k: self.launch_bound(k) for k in self.device}}


def compare(subjects: dict[str, Callable], arg_sets: Sequence[tuple], queue=None, *, warmup: int = 3,
            samples: int = 200, wall_rounds: int = 7, keep: dict | None = None) -> Comparison:
    """Warm every subject up, then time them interleaved: wall per call, then device per call.
    `keep`: {} to collect each subject's last output per input set (`keep[name][index]`), outputs
    of timed calls for a checker to verify afterwards."""
    queue = queue or default_queue()
    for _ in range(warmup):
        for fn in subjects.values():
            for args in arg_sets[:4]:
                fn(*args)
    queue.sync()
    wall = wall_per_call(subjects, arg_sets, queue, rounds=wall_rounds, keep=keep)
    device, method = device_per_call(subjects, arg_sets, queue, samples=samples, keep=keep,
                                     host_ms={n: s.p75 for n, s in wall.items()})  # the spin doubles if short
    return Comparison(device, wall, method)


_capture()
