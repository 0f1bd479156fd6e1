"""`--tp N`: the end-to-end benchmark over N processes, one per GPU (NCCL), or N CPU processes
(gloo) where there is no GPU.

The sandbox starts one child as for any end-to-end job (`tp_e2e_job`, `tp_probe_job`); that child
spawns the N ranks with torch.multiprocessing (spawn, never fork) and a TCP rendezvous on
127.0.0.1, so the user types one command and a timeout still kills the whole process group. Every
rank loads its shard of the model (fastkernels.models.sharding), patches the same candidates and
runs the single-process measurement (`fastkernels.measure.e2e_child._e2e_job`) on it: all ranks compute the
same replicated logits, each shadow-checks its own shards. Rank 0 gathers the ranks' results and
merges them: one E2EReport whose shadow check covers every rank's call sites and whose `tp_ranks`
says what each rank saw (device, token match, the NVLink-multicast settings of its environment).

NVLink multicast stays off in every process started here (MULTICAST_OFF): on shared hosts a
program that uses it can take the GPUs out of service.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

# NCCL's NVLink SHARP, PyTorch's symmetric-memory multicast and NVSHMEM's: all off.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# A rank stuck in a collective (its peer died or took another path) errors out after this long
# instead of waiting for the job's timeout.
COLLECTIVE_TIMEOUT_S = 600


def tp_environment(env: dict | None = None) -> dict:
    """`env` (default os.environ) with NVLink multicast off; what every rank's process gets."""
    out = dict(os.environ if env is None else env)
    out.update(MULTICAST_OFF)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, target: str, payload: dict, port: int, backend: str, out_dir: str) -> None:
    """One rank: join the group, run `target(payload)` on this rank's device, gather on rank 0."""
    import importlib

    import torch
    import torch.distributed as dist

    os.environ.update(MULTICAST_OFF)  # belt and braces: the spawn inherits them already
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        device = "cpu"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        module_name, func_name = target.split(":", 1)
        func = getattr(importlib.import_module(module_name), func_name)
        mine = {**payload, "device": device, "tp_rank": rank, "tp_world": world}
        if rank != 0:
            mine["progress_file"] = None  # one progress stream: rank 0's
        value = func(mine)
        info = {"rank": rank, "device": str(torch.cuda.get_device_name(rank)) if backend == "nccl" else "cpu",
                "backend": backend, "env": {k: os.environ.get(k) for k in MULTICAST_OFF}, "pid": os.getpid()}
        gathered = [None] * world if rank == 0 else None
        dist.gather_object({"info": info, "value": value}, gathered, dst=0)
        if rank == 0:
            tmp = Path(out_dir) / "result.tmp"
            tmp.write_text(json.dumps(gathered))
            os.replace(tmp, Path(out_dir) / "result.json")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    if backend == "gloo":
        # Every rank is past the barrier and the result is on disk. Tearing gloo down races with the
        # peer closing its sockets (a background thread then ends the rank in std::terminate,
        # SIGABRT: seen under load on 2 cores), so a gloo rank leaves without its destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    dist.destroy_process_group()


def launch(target, payload: dict, world: int, *, backend: str | None = None) -> list[dict]:
    """Run `target` (a module-level function taking a payload, or its "package.module:function"
    name) on `world` ranks; returns every rank's {"info", "value"} as gathered on rank 0. Raises what
    a rank raised."""
    import torch
    import torch.multiprocessing as mp

    from fastkernels.sandbox import job_name

    target = job_name(target)

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < world:
        from fastkernels.errors import ResourceError

        raise ResourceError(f"--tp {world} needs {world} GPUs; this machine has {torch.cuda.device_count()}")
    os.environ.update(MULTICAST_OFF)
    with tempfile.TemporaryDirectory(prefix="fk-tp-") as out_dir:
        try:
            mp.start_processes(_worker, args=(world, target, payload, _free_port(), backend, out_dir), nprocs=world,
                               join=True, start_method="spawn")
        except mp.ProcessRaisedException as exc:  # its text is a whole traceback: keep the error line
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            raise RuntimeError(f"rank {exc.error_index}: {lines[-1] if lines else exc}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"rank {exc.error_index} {str(exc).strip().splitlines()[0]}") from None
        return json.loads((Path(out_dir) / "result.json").read_text())


# ---- merging the ranks' results ------------------------------------------------------------------

def merge_shadow(per_rank: list[dict | None]) -> dict | None:
    """One shadow report over every rank's call sites (a site is named with its rank)."""
    reports = [(r, s) for r, s in enumerate(per_rank) if s]
    if not reports:
        return None
    sites, ops = [], {}
    for rank, rep in reports:
        for site in rep["sites"]:
            sites.append({**site, "site": f"{site['site']} (rank {rank})"})
        for op in rep["ops"]:
            ops.setdefault(op["op"], []).append((rank, op))
    merged_ops = []
    for key, items in ops.items():
        worst_rank, worst = max(items, key=lambda it: (not it[1]["passed"], it[1]["worst_ratio"]))
        merged_ops.append({
            **worst, "op": key, "passed": all(o["passed"] for _, o in items),
            "calls": sum(o["calls"] for _, o in items), "sites": sum(o["sites"] for _, o in items),
            "max_abs": max(o["max_abs"] for _, o in items),
            "mean_abs": sum(o["mean_abs"] for _, o in items) / len(items),
            "worst_site": f"{worst['worst_site']} (rank {worst_rank})" if worst["worst_site"] else None,
            "failures": [f"rank {r}: {f}" for r, o in items for f in o["failures"]],
        })
    return {"passed": all(o["passed"] for o in merged_ops), "failures": [f for o in merged_ops for f in o["failures"]],
            "ops": merged_ops, "sites": sites}


RANK_FIGURES = ("token_match", "top1_agreement", "logit_rel_error", "has_nan", "error")


def merge_e2e(gathered: list[dict]) -> dict:
    """Rank 0's `_e2e_job` result, with the shadow check of every rank and a `tp_ranks` summary;
    a set is failed on every rank if it failed on any."""
    base = gathered[0]["value"]
    world = len(gathered)
    for name, result in base["sets"].items():
        ranks = []
        for g in gathered:
            mine = g["value"]["sets"].get(name, {})
            ranks.append({**g["info"], **{k: mine.get(k) for k in RANK_FIGURES},
                          "timings": mine.get("timings", {})})
        result["shadow"] = merge_shadow([g["value"]["sets"].get(name, {}).get("shadow") for g in gathered])
        result["tp"] = world
        result["tp_ranks"] = ranks
        errors = [f"rank {r['rank']}: {r['error']}" for r in ranks if r.get("error")]
        if errors and not result.get("error"):
            result["error"] = errors[0]
        if any(r.get("has_nan") for r in ranks):
            result["has_nan"] = True
        figures = {(r["token_match"], r["top1_agreement"]) for r in ranks}
        if len(figures) > 1:
            result.setdefault("notes", []).append(
                "the ranks disagree on the model-level figures (their all-reduced logits differ): "
                + "; ".join(f"rank {r['rank']} token match {r['token_match']}" for r in ranks))
        result.setdefault("notes", []).append(
            f"tensor parallel over {world} ranks ({gathered[0]['info']['backend']}); timings are rank 0's")
    return base


def _backend(payload: dict) -> str | None:
    return "gloo" if (payload.get("device") or "").startswith("cpu") else None


def tp_e2e_job(payload: dict) -> dict:
    """Sandbox side of run_benchmarks(..., tp=N): `_e2e_job` on N ranks, merged on rank 0."""
    from fastkernels.measure.e2e_child import _e2e_job

    return merge_e2e(launch(_e2e_job, payload, int(payload["tp"]), backend=_backend(payload)))


def tp_probe_job(payload: dict) -> dict:
    """Sandbox side of a bisection probe under --tp: NaN if any rank saw one."""
    from fastkernels.measure.e2e_child import _probe_job

    gathered = launch(_probe_job, payload, int(payload["tp"]), backend=_backend(payload))
    nan = [f"rank {g['info']['rank']}: {g['value']['nan']}" for g in gathered if g["value"].get("nan")]
    return {"nan": nan[0] if nan else None}
