"""`--tp N` on CPU: the same code path as on GPUs (torch.distributed, spawned ranks), with gloo on 2
processes and tiny models (pinned to the CPU, so a one-GPU machine runs them too). Sharding is
checked against the unsharded model's logits; the end-to-end benchmark, the CLI and the agent run
tensor-parallel and gather every rank on rank 0. With two GPUs, the same run goes through NCCL."""

import json
import threading
import time

import pytest
import torch

from fastkernels.cli import main
from fastkernels.errors import UsageError
from fastkernels.gpu import devices
from fastkernels.measure.e2e import run_benchmark, run_benchmarks
from fastkernels.measure.tp import MULTICAST_OFF, launch
from fastkernels.models.catalog import resolve
from fastkernels.models.loading import load_model
from fastkernels.registry.tasks import (
    Workload,
    baseline_dir,
    build_inputs,
    build_spec,
    load_task,
    task_names,
)

from . import planted

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"  # tiny: 8 query heads, 2 key/value heads
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def baseline_codes(family, level):
    return {f"L{level}/{op}": (baseline_dir(level) / f"{op}.py").read_text()
            for op in task_names(level) if family in load_task(level, op).FAMILIES}


def test_two_gloo_ranks_compute_the_unsharded_models_logits():
    """Each rank holds half the heads and half the MLP (MoE experts: half of every expert), the
    all-reduces sit after attention and MLP, and the sum is the single-process model's output."""
    gathered = launch(f"{__package__}.tp_jobs:sharded_logits", {"models": [LLAMA, MIXTRAL]}, 2, backend="gloo")
    assert [g["info"]["rank"] for g in gathered] == [0, 1]
    assert all(g["info"]["env"] == MULTICAST_OFF for g in gathered)
    for model_id in (LLAMA, MIXTRAL):
        full = load_model(resolve(model_id, tiny=True), dtype=torch.float32, seed=0).model
        ids = torch.randint(0, full.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = full(ids, use_cache=False).logits
        for g in gathered:
            rank = g["value"][model_id]
            logits = torch.tensor(rank["logits"])
            # fp32; only the order of the sums differs (two partial sums added by the all-reduce).
            rel = float((logits - ref).norm() / ref.norm())
            assert rel < 1e-5, (model_id, g["info"]["rank"], rel)
            assert rank["q_rows"] == full.model.layers[0].self_attn.q_proj.weight.shape[0] // 2
            assert (rank["heads"], rank["kv_heads"]) == (full.config.num_attention_heads // 2,
                                                         full.config.num_key_value_heads // 2)
            assert rank["wrapped"] == ["mlp", "self_attn"]
            assert rank["meta_finite"] and rank["meta_std"] > 0 and rank["meta_q_rows"] == rank["q_rows"]
            assert rank["meta_rotary_ok"]


def test_tp2_patched_model_matches_and_every_rank_is_gathered_on_rank_0():
    """Level-1 baselines as candidates under --tp 2: token match 1.0, shadow sites of both ranks in
    one report. A kernel that is wrong only on rank 1 fails the run, and the report says where."""
    rank1_bug = planted.RMS_NORM_HEAD + '''
    def forward(self, x):
        import torch.distributed as dist

        out = self.weight * self.normed(x, self.variance_epsilon).to(x.dtype)
        if dist.is_initialized() and dist.get_rank() == 1:
            return (out.float() * 1.05).to(x.dtype)
        return out
'''
    good = baseline_codes("llama", 1)
    reports = run_benchmarks(LLAMA, 1, {"baseline": good, "bug": {**good, "L1/rms_norm": rank1_bug}}, tiny=True,
                             prompt_len=6, new_tokens=4, tp=2, timeout=300, device="cpu")
    r = reports["baseline"]
    assert r.passed, r.verdict
    assert r.tp == 2 and r.token_match == 1.0 and r.top1_agreement == 1.0
    assert [t["rank"] for t in r.tp_ranks] == [0, 1] and len({t["pid"] for t in r.tp_ranks}) == 2
    assert all(t["env"]["NCCL_NVLS_ENABLE"] == "0" and t["env"] == MULTICAST_OFF for t in r.tp_ranks)
    assert all(t["token_match"] == 1.0 for t in r.tp_ranks)
    sites = [s["site"] for s in r.shadow["sites"]]
    assert any(s.endswith("(rank 0)") for s in sites) and any(s.endswith("(rank 1)") for s in sites)
    assert {op["op"] for op in r.shadow["ops"]} == set(good) and all(op["calls"] > 0 for op in r.shadow["ops"])
    bug = reports["bug"]
    assert not bug.passed and "L1/rms_norm" in bug.blamed
    assert [op["op"] for op in bug.shadow["ops"] if not op["passed"]] == ["L1/rms_norm"]
    assert all(f.startswith("rank 1: ") for f in bug.shadow["failures"])


def test_cli_bench_tp2_runs_a_moe_model_end_to_end(tmp_path, monkeypatch, capsys):
    """`fastkernels bench --tp 2` on tiny Mixtral at level 2: the MoE and attention blocks see one
    rank's experts and heads, and the all-reduce after them is kept when they are replaced."""
    folder = tmp_path / "tasks" / "candidate" / "L2"
    folder.mkdir(parents=True)
    for op in ("attention_block", "moe_block"):
        (folder / f"{op}.py").write_text((baseline_dir(2) / f"{op}.py").read_text())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.json"
    code = main(["bench", "--model", MIXTRAL, "--level", "2", "--tiny", "--tp", "2", "--prompt-len", "6",
                 "--new-tokens", "4", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, report["verdict"]
    assert "tensor parallel x2" in " ".join(text.split()) and report["tp"] == 2 and report["token_match"] == 1.0
    assert sorted(op["op"] for op in report["shadow"]["ops"]) == ["L2/attention_block", "L2/moe_block"]
    assert len(report["tp_ranks"]) == 2 and all(t["backend"] == "gloo" for t in report["tp_ranks"])


def test_a_rank_that_raises_ends_the_run_with_its_error_line():
    """Rank 1's kernel raises while rank 0 waits in an all-reduce: the job ends (no hang) with one
    line naming the rank and the error, which the sandbox reports and bisection blames."""
    raising = planted.RMS_NORM_HEAD + '''
    def forward(self, x):
        import torch.distributed as dist

        if dist.get_rank() == 1:
            raise RuntimeError("rank-one kernel bug")
        return self.weight * self.normed(x, self.variance_epsilon).to(x.dtype)
'''
    payload = {"model": LLAMA, "tiny": True, "level": 1, "prompt_len": 4, "new_tokens": 2, "batch": 1,
               "dtype": "bfloat16", "seed": 0, "tp": 2, "sets": {"s": {"L1/rms_norm": raising}},
               "only": ["L1/rms_norm"]}
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^rank 1: RuntimeError: rank-one kernel bug$"):
        launch("fastkernels.measure.e2e_child:_probe_job", payload, 2, backend="gloo")
    assert time.monotonic() - start < 120


@pytest.mark.gpu
@pytest.mark.skipif(len(devices.visible_gpus()) < 2, reason="needs 2 GPUs: NCCL runs one rank per GPU")
def test_nccl_two_gpus_patched_model_matches():
    r = run_benchmark(MIXTRAL, 1, baseline_codes("mixtral", 1), tiny=True, prompt_len=6, new_tokens=4, tp=2,
                      timeout=600)
    assert r.passed, r.verdict
    assert r.token_match == 1.0 and [t["backend"] for t in r.tp_ranks] == ["nccl", "nccl"]
    assert [t["env"] for t in r.tp_ranks] == [MULTICAST_OFF, MULTICAST_OFF]


def test_agent_tp2_discovers_one_ranks_shapes_and_benchmarks_tensor_parallel(tmp_path, monkeypatch):
    """The agent's kernels are built for one rank's heads, and its end-to-end run asks for --tp 2
    (that run itself is the one the tests above make)."""
    from fastkernels.agent.agent import Agent, AgentConfig, OpStatus
    from fastkernels.agent.llm import get_backend
    from fastkernels.measure import e2e

    calls = []
    monkeypatch.setattr(e2e, "run_benchmark", lambda *a, **kw: calls.append(kw) or e2e.E2EReport(LLAMA, 1, True, []))
    agent = Agent(AgentConfig(model=LLAMA, level=1, tiny=True, ops=["attention"], tp=2, out_dir=tmp_path / "out"),
                  backend=get_backend("library"))
    (spec,) = agent.discover()
    assert spec.tp == 2 and spec.init_args["num_heads"] == 4 and spec.init_args["num_kv_heads"] == 1
    state = agent.states["attention"]
    state.code, state.status = (baseline_dir(1) / "attention.py").read_text(), OpStatus.APPROVED
    agent.run_e2e()
    assert calls and calls[0]["tp"] == 2
    with pytest.raises(UsageError, match="--tp 3 does not divide"):
        AgentConfig(model=LLAMA, level=1, tiny=True, tp=3)


def test_tp_that_does_not_divide_the_heads_is_a_one_line_error(capsys):
    with pytest.raises(UsageError, match=r"--tp 3 does not divide .*8 query, 2 key/value heads.*use --tp 2"):
        run_benchmark(LLAMA, 1, {"rms_norm": str(baseline_dir(1) / "rms_norm.py")}, tiny=True, tp=3)
    with pytest.raises(UsageError, match="works at levels 1 and 2"):
        run_benchmark(LLAMA, 3, {"decoder_layer": str(baseline_dir(3) / "decoder_layer.py")}, tiny=True, tp=2)
    assert main(["bench", "--model", LLAMA, "--level", "1", "--tiny", "--tp", "4", "--candidates",
                 str(baseline_dir(1).parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tp 4 does not divide" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("model_id", [MIXTRAL, "Qwen/Qwen3-30B-A3B"])
def test_experts_shard_the_same_whether_the_plan_lists_them_for_tp_or_only_for_ep(model_id):
    """transformers 5.17-5.24 puts a MoE model's experts in `base_model_tp_plan`; 5.25 moved them to
    `base_model_ep_plan` only. Either way every rank keeps half of every expert."""
    from transformers import AutoModelForCausalLM

    from fastkernels.models.sharding import shard_model

    def sharded(tp_plan, ep_plan):
        cfg = resolve(model_id, tiny=True).hf_config()
        cfg.base_model_tp_plan, cfg.base_model_ep_plan = tp_plan, ep_plan
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        names = shard_model(model, 0, 2)
        return model, names

    cfg = resolve(model_id, tiny=True).hf_config()
    experts = {"layers.*.mlp.experts.gate_up_proj": "packed_colwise", "layers.*.mlp.experts.down_proj": "rowwise"}
    attention = {k: v for k, v in cfg.base_model_tp_plan.items() if ".experts" not in k}
    ep_only = {"layers.*.mlp.experts.gate_up_proj": "grouped_gemm", "layers.*.mlp.experts.down_proj": "grouped_gemm",
               "layers.*.mlp.experts": "ep_dispatch_experts"}
    old, old_names = sharded({**attention, **experts, "layers.*.mlp.experts": "moe_tp_experts"}, {})
    new, new_names = sharded(attention, ep_only)
    assert sorted(old_names) == sorted(new_names)
    assert any(".experts.gate_up_proj" in n for n in new_names) and any(".experts.down_proj" in n for n in new_names)
    full_experts = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).model.layers[0].mlp.experts
    for model in (old, new):
        e = model.model.layers[0].mlp.experts
        assert e.gate_up_proj.shape[-2] == full_experts.gate_up_proj.shape[-2] // 2
        assert e.down_proj.shape[-1] == full_experts.down_proj.shape[-1] // 2
        assert type(model.model.layers[0].mlp).__name__ == "AllReduceOutput"


def test_task_shapes_under_tp_are_one_ranks():
    plain = build_spec(1, "attention", LLAMA, True)
    assert plain == build_spec(1, "attention", LLAMA, True, Workload.default(small=True))  # tp=1 unchanged
    sharded = build_spec(1, "attention", LLAMA, True, Workload(batch=2, prefill_len=16, decode_context=16, tp=2))
    assert sharded.init_args["num_heads"] == plain.init_args["num_heads"] // 2
    assert all(shape["tp"] == 2 for shape in sharded.shapes.values())
    q, k, v = build_inputs(sharded, "decode", "float32", "cpu", seed=0)
    assert q.shape[1] == sharded.init_args["num_heads"] and k.shape[1] == sharded.init_args["num_kv_heads"]
    rope = build_spec(1, "rotary_embedding", LLAMA, True, Workload(2, 16, 16, tp=2))
    assert rope.shapes["prefill"]["heads"] == 4 and rope.shapes["prefill"]["kv_heads"] == 1
    mlp = build_spec(1, "silu_and_mul", MIXTRAL, False, Workload(1, 4096, 4096, tp=2))
    assert mlp.shapes["prefill"]["width"] == 14336 // 2


# ---- unit jobs fan out one per GPU ---------------------------------------------------------------

def test_visible_gpus_reads_cuda_visible_devices():
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_gpu_pool_runs_one_job_per_gpu_and_uses_every_gpu():
    pool = devices.GpuPool(["0", "1"])
    busy: dict[str, int] = {"0": 0, "1": 0}
    most: dict[str, int] = {"0": 0, "1": 0}
    lock = threading.Lock()

    def job():
        with pool.acquire() as gpu:
            with lock:
                busy[gpu] += 1
                most[gpu] = max(most[gpu], busy[gpu])
            time.sleep(0.05)
            with lock:
                busy[gpu] -= 1

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == {"0": 1, "1": 1}
    assert sorted(pool._free) == ["0", "1"]


def test_gpu_pool_without_gpus_never_waits():
    pool = devices.GpuPool([])
    with pool.acquire() as a, pool.acquire() as b:  # nested: would deadlock if it limited anything
        assert a is None and b is None
    assert devices.GpuPool.job_env(None) is None
    assert devices.GpuPool.job_env("1", {"PATH": "/bin"}) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}


def test_run_unit_pins_its_job_to_the_gpu_it_was_given(monkeypatch):
    from fastkernels import sandbox
    from fastkernels.judge import gate

    seen = []

    def fake_run_job(target, payload, *, timeout, label, env=None, **kw):
        seen.append(env)
        return sandbox.JobResult(False, "exception", error="stopped here")

    monkeypatch.setattr(gate, "run_job", fake_run_job)
    spec = build_spec(1, "rms_norm", LLAMA, True)
    code = (baseline_dir(1) / "rms_norm.py").read_text()
    gate.run_unit(spec, code, gpu="1")
    gate.run_unit(spec, code)
    assert seen[0]["CUDA_VISIBLE_DEVICES"] == "1" and seen[1] is None
