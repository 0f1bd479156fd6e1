"""Machine metrics: NVML values converted to the units the cockpit shows, missing fields tolerated,
and a machine without an NVIDIA GPU sampled without error (CPU/RAM only, with the reason)."""

from __future__ import annotations

import sys
import types

import psutil

from fastkernels.gpu import metrics as gpu_metrics
from fastkernels.gpu.metrics import MetricsSampler


class _NVMLError(Exception):
    pass


def fake_pynvml(init_error: bool = False, devices: int = 2, no_power: bool = False) -> types.ModuleType:
    """A stand-in for nvidia-ml-py with its real function names and units (bytes, mW, MHz, °C)."""
    m = types.ModuleType("pynvml")
    m.NVMLError = _NVMLError
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_CLOCK_SM = 1
    m.calls = []

    def init():
        m.calls.append("init")
        if init_error:
            raise _NVMLError("Driver Not Loaded")

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.append("shutdown")
    m.nvmlDeviceGetCount = lambda: devices
    m.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3" if h == "h0" else "NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=90 if h == "h0" else 5, memory=40)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=20 * 2**30, total=80 * 2**30, free=60 * 2**30)
    m.nvmlDeviceGetTemperature = lambda h, sensor: 64 if sensor == m.NVML_TEMPERATURE_GPU else -1

    def power(h):
        if no_power:
            raise _NVMLError("Not Supported")
        return 455_250  # milliwatts

    m.nvmlDeviceGetPowerUsage = power
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    m.nvmlDeviceGetClockInfo = lambda h, clock: 1755 if clock == m.NVML_CLOCK_SM else 2619
    return m


def test_samples_gpus_in_display_units(monkeypatch):
    nv = fake_pynvml(devices=2)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    sampler = MetricsSampler()
    snap = sampler.sample()
    assert snap.has_gpu and snap.gpu_note == ""
    g0, g1 = snap.gpus
    assert (g0.index, g0.name, g1.name) == (0, "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")  # bytes or str names
    assert (g0.util_pct, g1.util_pct) == (90.0, 5.0)
    assert (g0.mem_used_mb, g0.mem_total_mb, g0.mem_pct) == (20480.0, 81920.0, 25.0)
    assert (g0.temp_c, g0.power_w, g0.power_limit_w, g0.sm_clock_mhz) == (64.0, 455.25, 700.0, 1755.0)
    sampler.sample()
    assert nv.calls.count("init") == 1  # initialised once, not per sample
    sampler.close()
    assert nv.calls[-1] == "shutdown"


def test_a_field_the_gpu_does_not_report_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(devices=1, no_power=True))
    snap = MetricsSampler().sample()
    assert snap.gpus[0].power_w is None and snap.gpus[0].temp_c == 64.0


def test_no_driver_means_host_only_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=True))
    snap = MetricsSampler().sample()
    assert not snap.has_gpu and snap.gpus == ()
    assert snap.gpu_note.startswith("no NVIDIA GPU") and "Driver Not Loaded" in snap.gpu_note
    assert snap.host.ram_total_mb == psutil.virtual_memory().total / 2**20
    assert 0.0 <= snap.host.cpu_pct <= 100.0 and snap.host.cpu_count == psutil.cpu_count()


def test_zero_devices_is_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(devices=0))
    snap = gpu_metrics.sample_once()
    assert not snap.has_gpu and "zero devices" in snap.gpu_note


def test_this_machine_samples_without_error():
    """The real library on the machine running the tests: GPUs if there are any, else the reason."""
    snap = gpu_metrics.sample_once()
    assert snap.host.ram_used_mb > 0
    assert snap.has_gpu or snap.gpu_note.startswith("no NVIDIA GPU")
