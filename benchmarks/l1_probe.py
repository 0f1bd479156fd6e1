"""GPU probe for the L1 library (issue 11): what l1_peers.py's table cannot say on its own.

One run on one GPU, sections in priority order under a time budget (each prints as it goes and
lands in --out/probe.json):
  attn_prefill  ours (every config, TMA on/off, the default path), SDPA and HF eager against an
                fp32 reference: relative Frobenius error, worst element over the output's RMS, and
                the verdict of l1_peers' old check (element-wise against eager bf16) for each, so a
                wrong kernel and a wrong rule can be told apart
  launch        host cost per call (N back-to-back calls, one sync) vs GPU time (a CUDA graph of
                one call, replayed) vs do_bench, for the decode-sized ops, old and new launch code
  attn_decode   split-K decode variants and SDPA, GPU time (graph replay, L2 flushed)
  sweep         launch configs of the memory-bound ops at the prefill shapes (graph replay)
  copy          torch copy of the same byte counts (the ceiling at that size)

    python benchmarks/l1_probe.py --out /tmp/probe --old .gpu/l1old --budget-s 150
"""

from __future__ import annotations

import argparse
import json
import os  # noqa: E402
import subprocess
import sys
import time
from pathlib import Path

CPU_DRY = "--cpu-dry-run" in sys.argv  # checks the script under the interpreter on tiny shapes
if CPU_DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fastkernels.registry.tasks import (  # noqa: E402
    Workload,
    build_baseline,
    build_inputs,
    build_spec,
    library_dir,
    load_module,
)

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN3 = "Qwen/Qwen3-8B"
QWEN3_MOE = "Qwen/Qwen3-30B-A3B"
DEV = torch.device("cpu" if CPU_DRY else "cuda")
BF16 = torch.bfloat16
RESULTS: dict = {}
LOG: list[str] = []


LOG_FILE: list = []


def say(*parts):
    line = " ".join(str(p) for p in parts)
    LOG.append(line)
    print(line, flush=True)
    if LOG_FILE:  # a run killed at its time limit still leaves its log
        with open(LOG_FILE[0], "a") as f:
            f.write(line + "\n")


def lib(op, old_dir=None):
    path = (Path(old_dir) if old_dir else library_dir(1)) / f"{op}.py"
    return load_module(path, name=f"probe_{'old' if old_dir else 'new'}_{op}")


def case(op, model, shape, seed=1):
    spec = build_spec(1, op, model, tiny=CPU_DRY, workload=Workload.default(small=CPU_DRY))
    base = build_baseline(spec, shape, BF16, DEV, seed=0)
    return spec, base, build_inputs(spec, shape, BF16, DEV, seed=seed)


def _wall_us(fn, *a, **k):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e6


def bench_us(fn, rep=60):
    if CPU_DRY:
        return _wall_us(fn)
    return 1e3 * float(do_bench(fn, warmup=20, rep=rep, return_mode="median"))


def graph_us(fn, rep=60):
    """GPU time of one call: a CUDA graph of the call, replayed under do_bench (L2 flushed)."""
    if CPU_DRY:
        return _wall_us(fn)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    us = bench_us(g.replay, rep)
    del g
    return us


def host_us(fn, n=300):
    """Wall time per call of n back-to-back calls (one sync at the end): the host's launch cost
    wherever it exceeds the GPU time."""
    if CPU_DRY:
        return _wall_us(fn)
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


# ---- attention prefill correctness -----------------------------------------------------------


def attn_ref32(q, k, v, scaling):
    """Causal GQA attention in fp32 (no tf32), [B, S, Hq, D]."""
    group = q.shape[1] // k.shape[1]
    s, total = q.shape[2], k.shape[2]
    hidden = torch.arange(total, device=q.device)[None, :] > torch.arange(total - s, total, device=q.device)[:, None]
    outs = []
    for h0 in range(0, q.shape[1], 8):  # 8 heads at a time: 8 x 4096^2 fp32 scores = 512 MiB
        qh = q[:, h0:h0 + 8].float()
        kh = k.float().repeat_interleave(group, 1)[:, h0:h0 + 8]
        vh = v.float().repeat_interleave(group, 1)[:, h0:h0 + 8]
        sc = (qh @ kh.transpose(2, 3)) * scaling
        outs.append(sc.masked_fill(hidden, float("-inf")).softmax(-1) @ vh)
    return torch.cat(outs, 1).transpose(1, 2).contiguous()


def err_stats(out, ref, eager):
    o, r, e = out.float(), ref, eager.float()
    rms = r.pow(2).mean().sqrt()
    err = (o - r).abs()
    # l1_peers' old rule: element-wise against eager bf16, 2e-2 * rms(eager) + 2e-2 * |eager|
    bound = 2e-2 * e.pow(2).mean().sqrt() + 2e-2 * e.abs()
    per_row = err.amax(dim=(0, 2, 3))  # worst error per query position
    return {
        "rel_fro": float((o - r).norm() / r.norm()),
        "max_over_rms": float(err.max() / rms),
        "old_rule_x": float(((o - e).abs() / bound).max()),
        "unit_rule_x": float((err / (2e-2 * rms + 2e-2 * r.abs())).max()),
        "worst_rows": [int(i) for i in per_row.topk(5).indices],
        "rows_0_127_max": float(per_row[:128].max()), "rows_last128_max": float(per_row[-128:].max()),
        "finite": bool(torch.isfinite(o).all()),
    }


def sec_attn_prefill(deadline):
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.backends.cuda.matmul.allow_tf32 = False
    m = lib("attention")
    if CPU_DRY:
        return {}  # bf16 dots under the interpreter: covered by the tests
    res = {}
    for model in (LLAMA, QWEN25):
        if time.monotonic() > deadline:
            break
        spec, base, (q, k, v) = case("attention", model, "prefill")
        sc = base.scaling
        ref = attn_ref32(q, k, v, sc)
        with torch.no_grad():
            eager = base(q, k, v)
        outs = {"eager_bf16": eager}
        outs["sdpa"] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=sc, enable_gqa=True).transpose(1, 2)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            outs["sdpa_flash"] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=sc, enable_gqa=True).transpose(1, 2)
        outs["ours_default"] = m.attention(q, k, v, sc)
        cfgs = [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages} for c in m._PREFILL_CONFIGS]
        for c in cfgs if model == LLAMA else []:
            for tma in (True, False):
                try:
                    outs[f"ours {c} tma={tma}"] = m.attention_prefill(q, k, v, sc, config=c, tma=tma)
                except Exception as exc:  # noqa: BLE001
                    say("  attn prefill", c, tma, "FAILED", type(exc).__name__, str(exc)[:200])
        name = model.split("/")[-1]
        res[name] = {}
        for key, out in outs.items():
            st = err_stats(out, ref, eager)
            res[name][key] = st
            say(f"attn prefill {name:22s} {key:70s} rel_fro {st['rel_fro']:.2e} max/rms {st['max_over_rms']:.2e} "
                f"old_rule {st['old_rule_x']:.2f}x unit_rule {st['unit_rule_x']:.2f}x worst rows {st['worst_rows']}")
        # a second draw: does the error move (a race) or stay (rounding)?
        again = m.attention(q, k, v, sc)
        res[name]["ours_default_repeat_max_diff"] = float((again.float() - outs["ours_default"].float()).abs().max())
        say("  repeat max diff", res[name]["ours_default_repeat_max_diff"])
        if model == LLAMA and time.monotonic() < deadline:
            t = {"sdpa_flash": None, "ours_default": None}
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                t["sdpa_flash"] = bench_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=sc, enable_gqa=True))
            t["ours_default"] = bench_us(lambda: m.attention(q, k, v, sc))
            for c in cfgs:
                for tma in (True, False):
                    t[f"{c} tma={tma}"] = bench_us(lambda c=c, tma=tma: m.attention_prefill(q, k, v, sc, config=c, tma=tma))
            res[name]["times_us"] = t
            for kk, vv in t.items():
                say(f"  time {kk}: {vv:.1f} us")
        del outs, ref, eager, q, k, v
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    return res


# ---- launch cost: host vs GPU ----------------------------------------------------------------


@triton.jit
def _empty(p):
    pass



def decode_calls(mods):
    """{name: zero-arg callable} of each decode-sized op, for one library version."""
    calls = {}
    _, base, (x,) = case("rms_norm", LLAMA, "decode")
    calls["rms_norm"] = lambda: mods["rms_norm"].rms_norm(x, base.weight, 1e-5)
    _, base2, (x2, r2) = case("add_rms_norm", LLAMA, "decode")
    calls["add_rms_norm"] = lambda: mods["add_rms_norm"].add_rms_norm(x2, r2, base2.weight, 1e-5)
    _, _, (g, u) = case("silu_and_mul", LLAMA, "decode")
    calls["silu_and_mul"] = lambda: mods["silu_and_mul"].silu_and_mul(g, u)
    _, _, (q, k, c, s) = case("rotary_embedding", LLAMA, "decode")
    calls["rotary_embedding"] = lambda: mods["rotary_embedding"].apply_rotary(q, k, c, s)
    _, base3, (ids,) = case("embedding", LLAMA, "decode")
    calls["embedding"] = lambda: mods["embedding"].embedding(ids, base3.weight)
    _, _, (qa, ka, va) = case("attention", LLAMA, "decode")
    calls["attention"] = lambda: mods["attention"].attention(qa, ka, va, 128 ** -0.5)
    return calls


def sec_launch(old_dir, deadline):
    res = {}
    ops = ["rms_norm", "add_rms_norm", "silu_and_mul", "rotary_embedding", "embedding", "attention"]
    x = torch.randn(1, device=DEV)
    res["torch_add_1elem"] = {"host_us": host_us(lambda: x.add(1.0)), "bench_us": bench_us(lambda: x.add(1.0))}
    say("launch torch add (1 element):", res["torch_add_1elem"])

    res["triton_empty_jit"] = {"host_us": host_us(lambda: _empty[(1,)](x))}
    say("launch empty triton kernel via JIT:", res["triton_empty_jit"])
    for tag, d in (("new", None), ("old", old_dir)):
        if d is None and tag == "old":
            continue
        mods = {op: lib(op, d) for op in ops}
        calls = decode_calls(mods)
        for op, fn in calls.items():
            if time.monotonic() > deadline:
                break
            r = {"host_us": host_us(fn), "bench_us": bench_us(fn), "graph_us": graph_us(fn)}
            res[f"{op} {tag}"] = r
            say(f"launch {op:18s} {tag}: host {r['host_us']:.1f} us/call, do_bench {r['bench_us']:.1f} us, graph {r['graph_us']:.1f} us")
    # peers at decode, same three numbers
    from torch.nn import functional as F

    _, _, (qa, ka, va) = case("attention", LLAMA, "decode")
    sd = lambda: F.scaled_dot_product_attention(qa, ka, va, scale=128 ** -0.5, enable_gqa=True)  # noqa: E731
    res["sdpa decode"] = {"host_us": host_us(sd), "bench_us": bench_us(sd), "graph_us": graph_us(sd)}
    say("launch sdpa decode:", res["sdpa decode"])
    return res


# ---- decode attention variants ---------------------------------------------------------------


def sec_attn_decode(deadline):
    from torch.nn import functional as F

    m = lib("attention")
    res = {}
    for model in (LLAMA, QWEN25):
        _, _, (q, k, v) = case("attention", model, "decode")
        name = model.split("/")[-1]
        sd = lambda: F.scaled_dot_product_attention(q, k, v, scale=128 ** -0.5, enable_gqa=True)  # noqa: E731
        res[f"{name} sdpa"] = graph_us(sd)
        ref = sd().transpose(1, 2)
        variants = [(None, None, None, None)] + [(sp, bn, nw, ns) for sp in (16, 33, 66, 132) for bn, nw, ns in
                                                 ((64, 4, 3), (64, 4, 2), (32, 4, 3), (128, 8, 2), (64, 2, 3))]
        for sp, bn, nw, ns in variants:
            if time.monotonic() > deadline:
                break
            fn = lambda: m.attention_decode(q, k, v, 128 ** -0.5, n_splits=sp, block_n=bn, num_warps=nw, num_stages=ns)  # noqa: E731
            err = float((fn().float() - ref.float()).abs().max())
            res[f"{name} splits={sp} bn={bn} w={nw} st={ns}"] = us = graph_us(fn)
            say(f"attn decode {name} splits={sp} bn={bn} w={nw} st={ns}: {us:.1f} us (sdpa {res[f'{name} sdpa']:.1f}) max diff vs sdpa {err:.2e}")
    return res


# ---- memory-bound sweeps -----------------------------------------------------------------------


def sec_sweep(deadline):
    res = {}

    def run(label, fn, nbytes):
        if time.monotonic() > deadline:
            return
        try:
            us = graph_us(fn, rep=40)
        except Exception as exc:  # noqa: BLE001
            say("sweep", label, "FAILED", type(exc).__name__, str(exc)[:160])
            return
        res[label] = {"us": us, "TBps": nbytes / us / 1e6}
        say(f"sweep {label}: {us:.1f} us, {nbytes / us / 1e6:.2f} TB/s")

    m = lib("rms_norm")
    norm_cfgs = [(0, 1, 8, 4096), (0, 1, 4, 4096), (0, 1, 16, 8192), (0, 1, 4, 8192), (8, 2, 4, 8192), (8, 2, 4, 4096),
                 (4, 3, 8, 8192), (2, 4, 16, 4096), (16, 2, 2, 4096), (0, 1, 16, 16384)]

    def sweep_rms(model, shape, cfgs):
        _, base, (x,) = case("rms_norm", model, shape)
        nb = 2 * x.numel() * 2
        run(f"rms_norm {model.split('/')[-1]} {shape} default", lambda: m.rms_norm(x, base.weight, 1e-6), nb)
        for ctas, st, nw, tile in cfgs:
            c = {"CTAS_PER_SM": ctas, "STAGES": st, "num_warps": nw, "TILE": tile}
            run(f"rms_norm {model.split('/')[-1]} {shape} {c}", lambda c=c: m.rms_norm(x, base.weight, 1e-6, config=c), nb)

    sweep_rms(LLAMA, "prefill", norm_cfgs)
    ma = lib("add_rms_norm")

    def sweep_add(model, cfgs):
        _, base, (x, r) = case("add_rms_norm", model, "prefill")
        nb = 4 * x.numel() * 2
        run(f"add_rms_norm {model.split('/')[-1]} default", lambda: ma.add_rms_norm(x, r, base.weight, 1e-6), nb)
        for ctas, st, nw, tile in cfgs:
            c = {"CTAS_PER_SM": ctas, "STAGES": st, "num_warps": nw, "TILE": tile}
            run(f"add_rms_norm {model.split('/')[-1]} {c}", lambda c=c: ma.add_rms_norm(x, r, base.weight, 1e-6, config=c), nb)

    add_cfgs = [(0, 1, 8, 4096), (0, 1, 16, 8192), (0, 1, 4, 4096), (8, 2, 4, 4096), (4, 2, 8, 4096), (2, 4, 16, 4096)]
    sweep_add(LLAMA, add_cfgs)
    mr = lib("rotary_embedding")

    def sweep_rope(model, cfgs):
        _, _, (q, k, cos, sin) = case("rotary_embedding", model, "prefill")
        nb = 2 * (q.numel() + k.numel()) * 2 + 2 * cos.numel() * cos.element_size()
        run(f"rotary {model.split('/')[-1]} default", lambda: mr.apply_rotary(q, k, cos, sin), nb)
        for bs, hh, nw in cfgs:
            c = {"BLOCK_S": bs, "HEADS": hh, "num_warps": nw}
            run(f"rotary {model.split('/')[-1]} {c}", lambda c=c: mr.apply_rotary(q, k, cos, sin, config=c), nb)

    rope_cfgs = [(16, 1, 4), (32, 1, 4), (32, 1, 8), (64, 1, 8), (16, 2, 4), (8, 1, 2), (64, 2, 8), (16, 8, 4)]
    sweep_rope(LLAMA, rope_cfgs)
    ms = lib("silu_and_mul")
    for model in (QWEN3_MOE, LLAMA):
        _, _, (g, u) = case("silu_and_mul", model, "prefill")
        nb = 3 * g.numel() * 2
        run(f"silu {model.split('/')[-1]} default", lambda: ms.silu_and_mul(g, u), nb)
        for bl, nw in [(1024, 4), (2048, 4), (4096, 8), (8192, 8)]:
            c = {"BLOCK": bl, "num_warps": nw}
            run(f"silu {model.split('/')[-1]} {c}", lambda c=c: ms.silu_and_mul(g, u, config=c), nb)
    sweep_rms(QWEN25, "prefill", norm_cfgs[:6])
    me = lib("embedding")
    _, base, (ids,) = case("embedding", LLAMA, "prefill")
    nb = 2 * ids.numel() * base.weight.shape[1] * 2
    run("embedding llama default", lambda: me.embedding(ids, base.weight), nb)
    for bt, bh, nw in [(1, 4096, 8), (1, 4096, 4), (2, 4096, 8), (2, 4096, 16), (1, 2048, 4), (4, 4096, 16)]:
        run(f"embedding llama {(bt, bh, nw)}", lambda c=(bt, bh, nw): me.embedding(ids, base.weight, config=c), nb)
    sweep_rms(QWEN3, "qk_norm_prefill", norm_cfgs[:6])
    sweep_add(QWEN25, add_cfgs[:4])
    sweep_rope(QWEN25, rope_cfgs[:5])
    return res


def sec_copy():
    res = {}
    for mib in ((1,) if CPU_DRY else (16, 32, 56, 64, 168, 512)):
        n = mib * 2**20 // 2
        a = torch.randn(n, device=DEV, dtype=BF16)
        b = torch.empty_like(a)
        us = graph_us(lambda: b.copy_(a))
        res[f"{mib} MiB -> {mib} MiB"] = {"us": us, "TBps": 2 * n * 2 / us / 1e6}
        say(f"copy {mib} MiB: {us:.1f} us, {2 * n * 2 / us / 1e6:.2f} TB/s")
        del a, b
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--old", default=None, help="folder with the previous library files (launch comparison)")
    ap.add_argument("--budget-s", type=float, default=150)
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--sections", default="attn_prefill,launch,attn_decode,copy,sweep")
    args = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE.append(out / "probe_live.log")
    try:
        say(subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm,power.draw,temperature.gpu",
                            "--format=csv"], capture_output=True, text=True).stdout.strip())
        say(subprocess.run("lscpu | grep -E 'Model name|^CPU\\(s\\)|MHz'", shell=True, capture_output=True, text=True).stdout.strip())
    except Exception:  # noqa: BLE001
        pass
    say(f"torch {torch.__version__} triton {triton.__version__} {'cpu' if CPU_DRY else torch.cuda.get_device_name()}")
    sections = args.sections.split(",")
    for name in sections:
        if time.monotonic() > deadline:
            say(f"section {name}: skipped (budget)")
            continue
        t = time.monotonic()
        try:
            if name == "attn_prefill":
                RESULTS[name] = sec_attn_prefill(deadline)
            elif name == "launch":
                RESULTS[name] = sec_launch(args.old, deadline)
            elif name == "attn_decode":
                RESULTS[name] = sec_attn_decode(deadline)
            elif name == "sweep":
                RESULTS[name] = sec_sweep(deadline)
            elif name == "copy":
                RESULTS[name] = sec_copy()
        except Exception as exc:  # noqa: BLE001
            import traceback

            say(f"section {name} FAILED: {type(exc).__name__}: {exc}")
            say(traceback.format_exc()[-3000:])
        say(f"section {name}: {time.monotonic() - t:.0f} s")
        (out / "probe.json").write_text(json.dumps(RESULTS, indent=1, default=str))
        (out / "probe.log").write_text("\n".join(LOG) + "\n")
    if not CPU_DRY:
        say(subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu", "--format=csv"],
                           capture_output=True, text=True).stdout.strip())
    (out / "probe.log").write_text("\n".join(LOG) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
