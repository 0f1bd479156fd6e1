"""Which GPUs this process may use, and one job at a time on each.

`GpuPool.acquire()` hands a unit-benchmark job a GPU of its own (the agent runs several at once:
unit jobs of different operators fan out one per GPU, and a job waits while every GPU is busy, so
no two timings share a device). Without a GPU it hands out None and never waits: on a CPU the
jobs run side by side as before. Decided without importing torch (the agent's process never opens
a CUDA context)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import threading


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPU ids a child may be given as CUDA_VISIBLE_DEVICES: those CUDA_VISIBLE_DEVICES lists
    (when set), else one per /dev/nvidiaN."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return [] if not ids or ids[0] in ("-1", "none", "NoDevFiles") else ids
    nodes = [os.path.basename(p) for p in glob.glob("/dev/nvidia[0-9]*")]
    return sorted((n.removeprefix("nvidia") for n in nodes if re.fullmatch(r"nvidia\d+", n)), key=int)


class GpuPool:
    """Hands out GPU ids, one job per GPU at a time (see the module docstring)."""

    def __init__(self, gpus: list[str] | None = None) -> None:
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        self._free = list(self.gpus)
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def acquire(self):
        """Yields a GPU id (str) for the duration of the block, or None when there is no GPU."""
        if not self.gpus:
            yield None
            return
        with self._cond:
            while not self._free:
                self._cond.wait()
            gpu = self._free.pop(0)
        try:
            yield gpu
        finally:
            with self._cond:
                self._free.append(gpu)
                self._cond.notify()

    @staticmethod
    def job_env(gpu: str | None, env: dict | None = None) -> dict | None:
        """The environment of a job pinned to `gpu` (None: leave the environment as it is)."""
        if gpu is None:
            return None
        return {**(os.environ if env is None else env), "CUDA_VISIBLE_DEVICES": str(gpu)}
