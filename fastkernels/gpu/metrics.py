"""Live machine metrics: per-GPU utilisation, memory, temperature, power and SM clock through NVML
(nvidia-ml-py), and CPU/RAM through psutil. Plain dataclasses, no UI: the cockpit samples this
off its UI thread about every 500 ms; a CLI could print it.

On a machine without an NVIDIA GPU (no driver, no NVML library, or zero devices) sampling still
works: `gpus` is empty and `gpu_note` says why."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GPUSample:
    index: int
    name: str
    util_pct: float  # SM busy over the driver's last sample period
    mem_used_mb: float
    mem_total_mb: float
    temp_c: float | None
    power_w: float | None
    power_limit_w: float | None
    sm_clock_mhz: float | None

    @property
    def mem_pct(self) -> float:
        return 100.0 * self.mem_used_mb / self.mem_total_mb if self.mem_total_mb else 0.0


@dataclass(frozen=True)
class HostSample:
    cpu_pct: float
    ram_used_mb: float
    ram_total_mb: float
    cpu_count: int

    @property
    def ram_pct(self) -> float:
        return 100.0 * self.ram_used_mb / self.ram_total_mb if self.ram_total_mb else 0.0


@dataclass(frozen=True)
class MetricsSnapshot:
    ts: float
    host: HostSample
    gpus: tuple[GPUSample, ...] = field(default_factory=tuple)
    gpu_note: str = ""  # why there are no GPU samples ("" when there are)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


_MB = 1024 * 1024


class MetricsSampler:
    """Samples the machine. NVML is initialised once on first use and shut down by `close()`.
    Thread-safe: one lock around NVML calls (the library is, but init/shutdown are not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None
        self._handles: list = []
        self._names: list[str] = []
        self._note = ""
        self._started = False

    def _start(self) -> None:
        self._started = True
        try:
            import pynvml
        except ImportError:
            self._note = "no NVIDIA GPU: nvidia-ml-py is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._note = f"no NVIDIA GPU: NVML unavailable ({exc})"
            return
        self._nvml = pynvml
        try:
            count = pynvml.nvmlDeviceGetCount()
            for i in range(count):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                self._handles.append(h)
                self._names.append(name.decode() if isinstance(name, bytes) else str(name))
        except pynvml.NVMLError as exc:
            self._note = f"NVML error while listing GPUs ({exc})"
        if not self._handles and not self._note:
            self._note = "no NVIDIA GPU: the driver reports zero devices"

    def _gpu(self, i: int) -> GPUSample:
        nv = self._nvml
        h = self._handles[i]

        def opt(fn, *a):
            try:
                return fn(h, *a)
            except nv.NVMLError:  # a field this GPU/driver does not report
                return None

        util = opt(nv.nvmlDeviceGetUtilizationRates)
        mem = opt(nv.nvmlDeviceGetMemoryInfo)
        temp = opt(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
        power = opt(nv.nvmlDeviceGetPowerUsage)
        limit = opt(nv.nvmlDeviceGetEnforcedPowerLimit)
        clock = opt(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
        return GPUSample(
            index=i,
            name=self._names[i],
            util_pct=float(util.gpu) if util is not None else 0.0,
            mem_used_mb=mem.used / _MB if mem is not None else 0.0,
            mem_total_mb=mem.total / _MB if mem is not None else 0.0,
            temp_c=float(temp) if temp is not None else None,
            power_w=power / 1000.0 if power is not None else None,  # NVML reports milliwatts
            power_limit_w=limit / 1000.0 if limit is not None else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
        )

    def sample(self) -> MetricsSnapshot:
        import psutil

        vm = psutil.virtual_memory()
        host = HostSample(
            cpu_pct=float(psutil.cpu_percent(interval=None)),  # since the previous call
            ram_used_mb=(vm.total - vm.available) / _MB,
            ram_total_mb=vm.total / _MB,
            cpu_count=psutil.cpu_count() or 1,
        )
        with self._lock:
            if not self._started:
                self._start()
            gpus = tuple(self._gpu(i) for i in range(len(self._handles))) if self._nvml else ()
        return MetricsSnapshot(ts=time.time(), host=host, gpus=gpus, gpu_note="" if gpus else self._note)

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    pass
            self._nvml, self._handles, self._names, self._started = None, [], [], False


def sample_once() -> MetricsSnapshot:
    """One snapshot with a throwaway sampler (CLI use)."""
    s = MetricsSampler()
    try:
        return s.sample()
    finally:
        s.close()
