"""Device ceilings and where a kernel sits under them.

The ceilings are measured, not taken from a datasheet: copy bandwidth from a large device-to-device
copy (bytes read + written per second) and dense bf16 matmul FLOP/s. Measured once per GPU model and
cached on disk (user cache dir, keyed by the GPU's name), because measuring takes a few seconds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

COPY_BYTES = 1 << 30  # 1 GiB: far past any L2, so the copy runs at DRAM speed
MATMUL_N = 8192  # 8192^3 bf16: large enough to saturate tensor cores on an H100


def cache_path() -> Path:
    override = os.environ.get("FASTKERNELS_CACHE_DIR")
    if override:
        root = Path(override)
    else:
        try:
            from platformdirs import user_cache_dir

            root = Path(user_cache_dir("fastkernels"))
        except ImportError:  # the GPU box may lack platformdirs: the same place by hand
            root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastkernels"
    return root / "device_ceilings.json"


def measure_ceilings() -> dict:
    """Measure copy bandwidth and bf16 matmul throughput of the current CUDA device."""
    import torch

    from fastkernels.measure.timing import bench_gpu

    n = COPY_BYTES // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = bench_gpu(lambda: dst.copy_(src), [()], warmup_ms=50, rep_ms=300)
    copy_bps = 2 * COPY_BYTES / (t.median_ms * 1e-3)
    del src, dst
    a = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.bfloat16, device="cuda")
    t = bench_gpu(lambda: torch.mm(a, b), [()], warmup_ms=100, rep_ms=500)
    flops = 2 * MATMUL_N**3 / (t.median_ms * 1e-3)
    return {"gpu": torch.cuda.get_device_name(), "copy_bytes_per_s": copy_bps, "bf16_flops_per_s": flops,
            "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def device_ceilings(refresh: bool = False) -> dict:
    """The ceilings of the current CUDA device, from the cache or measured now (and cached)."""
    import torch

    name = torch.cuda.get_device_name()
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not refresh and name in cached:
        return cached[name]
    ceilings = measure_ceilings()
    cached[name] = ceilings
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cached, indent=2))
    os.replace(tmp, path)
    return ceilings


def achieved(cost: dict, ms: float, bound: str, ceilings: dict | None) -> dict:
    """Achieved bytes/s and FLOP/s of one call taking `ms`, and the fraction of the ceiling that
    `bound` ("memory" or "compute") names."""
    seconds = ms * 1e-3
    bps = cost.get("bytes", 0) / seconds if seconds > 0 else None
    fps = cost.get("flops", 0) / seconds if seconds > 0 else None
    fraction = None
    if ceilings and seconds > 0:
        if bound == "compute":
            fraction = fps / ceilings["bf16_flops_per_s"]
        else:
            fraction = bps / ceilings["copy_bytes_per_s"]
    return {"bytes_per_s": bps, "flops_per_s": fps, "roofline_fraction": fraction}
