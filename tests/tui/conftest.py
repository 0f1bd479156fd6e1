"""Shared pieces of the cockpit tests: the app on a fake agent, a fixed metrics sampler, and a
settings folder of the test's own (never the user's)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from fastkernels.gpu.metrics import GPUSample, HostSample, MetricsSnapshot
from fastkernels_tui.app import FastKernelsApp
from fastkernels_tui.options import SessionOptions

from .fake_agent import FakeAgent

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class FixedSampler:
    """Deterministic metrics: one H100-like GPU, or none (`gpu=False`)."""

    def __init__(self, gpu: bool = True) -> None:
        self.gpu = gpu
        self.n = 0

    def sample(self) -> MetricsSnapshot:
        self.n += 1
        host = HostSample(cpu_pct=25.0, ram_used_mb=8192.0, ram_total_mb=32768.0, cpu_count=16)
        if not self.gpu:
            return MetricsSnapshot(ts=0.0, host=host, gpus=(), gpu_note="no NVIDIA GPU: NVML unavailable (test)")
        g = GPUSample(index=0, name="NVIDIA H100 80GB HBM3", util_pct=87.0, mem_used_mb=40960.0,
                      mem_total_mb=81920.0, temp_c=61.0, power_w=512.0, power_limit_w=700.0, sm_clock_mhz=1980.0)
        return MetricsSnapshot(ts=0.0, host=host, gpus=(g,))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests of this folder in a fresh event loop (Textual's pilot is asyncio)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


@pytest.fixture(autouse=True)
def _own_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTKERNELS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def make_app(tmp_path):
    """make_app(**agent_kwargs, options=..., gpu=..., mask_times=...) -> (app, agents list)."""

    def make(options: SessionOptions | None = None, gpu: bool = True, mask_times: bool = True,
             sample_interval: float = 0.5, **agent_kw):
        opts = options or SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library",
                                         out_dir=tmp_path / "candidate", theme="fastkernels-ember")
        agents: list[FakeAgent] = []

        def factory(o, sink):
            agent = FakeAgent(o, sink, **agent_kw)
            agents.append(agent)
            return agent

        app = FastKernelsApp(opts, agent_factory=factory, sampler=FixedSampler(gpu), sample_interval=sample_interval,
                             mask_times=mask_times)
        return app, agents

    return make
