"""Tracking: runs logged through `tracker` land in a real SQLite MLflow store, `fastkernels
history` and the MLflow server read them back, secrets never reach the store, and everything goes
on without MLflow."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from fastkernels import cli
from fastkernels.rules.secrets import REDACTED, scrub, scrub_obj
from fastkernels.measure.e2e import E2EReport
from fastkernels.measure.unit import ShapeResult, UnitReport
from fastkernels.track.tracking import tracker

REPO = Path(__file__).resolve().parents[2]

# Fake secrets, fresh per session; each is caught by one rule only, so each rule is tested.
ENV_KEY = "fkenv" + secrets.token_hex(16)  # the value of an *_API_KEY variable, no known shape
HF_KEY = "hf_" + secrets.token_hex(16)  # an *_TOKEN variable with a known shape
SHAPED = "sk-proj-" + secrets.token_hex(16)  # not in the environment: caught by its shape
PARAM_KEY = "p" + secrets.token_hex(12)  # passed in as a param named api_key
BEARER = secrets.token_hex(16)  # inside an error message
ALL_SECRETS = (ENV_KEY, HF_KEY, SHAPED, PARAM_KEY, BEARER)

RMS_CODE = "import torch\n\nclass RMSNorm(torch.nn.Module):\n    pass  # attempt 2\n"


def _unit(passed: bool, speedups: list[float]) -> UnitReport:
    """A unit report as the gate returns it: per-shape speedups, top-level verdict."""
    return UnitReport(op="x", passed=passed, device="cuda",
                      shapes=[ShapeResult(shape=f"s{i}", dtype="bfloat16", passed=passed, speedup_vs_eager=s,
                                          speedup_vs_compile=s / 2) for i, s in enumerate(speedups)])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store with three top-level runs (oldest first): a Mixtral L2 run that raised,
    a Llama L1 agent-shaped run with child runs logged from worker threads, and a short Qwen L1
    run. Returns (uri, {name: run_id}, artifact dir)."""
    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root}/mlflow.db"
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_PROVIDER_API_KEY", ENV_KEY)
        mp.setenv("HF_TOKEN", HF_KEY)
        mp.delenv("FASTKERNELS_TRACKING", raising=False)
        tracker.configure(uri)
        try:
            with pytest.raises(ValueError):
                with tracker.start_run("agent", params={"model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "level": 2,
                                                         "backend": "library"}, root=True) as run:
                    ids["failed"] = run
                    raise ValueError("discovery blew up")
            time.sleep(0.01)  # distinct start times: history orders by them

            params = {"model": "meta-llama/Llama-3.1-8B-Instruct", "level": 1, "backend": "claude-opus-4-6",
                      "api_key": PARAM_KEY, "flags": {"cuda_only": False, "max_retries": 5, "tp": 1},
                      "max_tokens": 8192, "llm_base_url": f"https://llm.example/v1?key={SHAPED}"}
            with tracker.start_run("agent", params=params, root=True) as run:
                ids["agent"] = run

                def one_op(op: str, attempts: int, passed: bool, speedups: list[float]) -> None:
                    tracker.log_metrics({f"seen.{op}": 1})  # a worker thread with no run: the agent run
                    with tracker.start_run(op):  # a worker thread's run: a child of the agent run
                        for n in range(1, attempts + 1):
                            last = n == attempts
                            tracker.log_attempt(
                                op, n, prompt=f"Write {op}. key={ENV_KEY} token {HF_KEY}",
                                reply=f"```python\n# {op} attempt {n}\n```\nused {SHAPED}",
                                code=RMS_CODE if (op == "rms_norm" and last) else f"# {op} attempt {n}\n",
                                error=None if last else f"ImportError: 401 Authorization: Bearer {BEARER}",
                                level=1, backend="claude-opus-4-6",
                                status=("correct" if passed else "failed") if last else "failed")
                            tracker.log_unit(op, _unit(passed and last, speedups), attempt=n)

                jobs = [("rms_norm", 2, True, [2.0, 3.125]), ("silu_and_mul", 1, True, [1.2, 1.2]),
                        ("rotary_embedding", 3, False, [0.5])]
                with ThreadPoolExecutor(3) as pool:
                    list(pool.map(lambda j: one_op(*j), jobs))
                tracker.log_metrics({"tokens": {"input": 1200, "output": 3400}, "gen_seconds": 12.5})
                # The report the agent and `fastkernels bench` log: its decode speedup is what
                # history shows as the run's end-to-end speedup.
                tracker.log_e2e(E2EReport(model_id=params["model"], level=1, tiny=False, candidates=["L1/rms_norm"],
                                          passed=True, token_match=0.97, speedup_decode=1.3, speedup_prefill=1.1,
                                          shadow={"rms_norm": {"max_err": 0.004, "worst_layer": 1}},
                                          notes=[f"ran with {ENV_KEY}"]))
                tracker.set_status("partial")
            time.sleep(0.01)

            with tracker.start_run("agent", params={"model": "Qwen/Qwen3-8B", "level": 1, "backend": "library"},
                                   root=True) as run:
                ids["qwen"] = run
                # what the agent logs today: a kernel with status "passed", a plain `{op}.speedup`
                tracker.log_kernel("rms_norm", level=1, code="# qwen rms\n", attempt=1, backend="library", status="passed")
                tracker.log_kernel("rope", level=1, code="# qwen rope\n", attempt=1, backend="library", status="failed:unit")
                tracker.log_metrics({"rms_norm.speedup": 1.7, "rms_norm.attempts": 1})
                tracker.log_metrics({"kernels_passing": 4, "kernels_total": 5})  # the agent's totals (resumed)
        finally:
            tracker.configure()
    art = Path(f"{root}/mlartifacts")
    return uri, {k: h.run_id for k, h in ids.items()}, art


def _history(capsys, *argv: str, width: int = 250) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", str(width))  # rich sizes tables to it (a pipe would get 80)
        assert cli.main(["history", *argv]) == 0
    return capsys.readouterr().out


def test_history_table_and_json(store, capsys):
    uri, ids, _ = store
    assert all(ids.values())

    rows = json.loads(_history(capsys, "--tracking-uri", uri, "--json"))
    assert [r["run_id"] for r in rows] == [ids["qwen"], ids["agent"], ids["failed"]]  # newest first
    qwen, agent, failed = rows
    assert (agent["model"], agent["level"], agent["backend"]) == ("meta-llama/Llama-3.1-8B-Instruct", "1", "claude-opus-4-6")
    assert (agent["kernels_total"], agent["kernels_passing"]) == (3, 2)
    # op speedup = geometric mean over shapes: sqrt(2.0 * 3.125) = 2.5; rotary failed so is not "best"
    assert agent["best_speedups"] == [{"op": "rms_norm", "speedup": pytest.approx(2.5)},
                                      {"op": "silu_and_mul", "speedup": pytest.approx(1.2)}]
    assert (agent["e2e_passed"], agent["e2e_token_match"], agent["e2e_speedup"]) == (True, 0.97, 1.3)
    assert (agent["status"], agent["mlflow_status"]) == ("partial", "FINISHED")
    assert (failed["status"], failed["mlflow_status"], failed["kernels_total"]) == ("failed", "FAILED", 0)
    assert (qwen["kernels_total"], qwen["kernels_passing"], qwen["e2e_token_match"]) == (5, 4, None)
    assert qwen["best_speedups"] == [{"op": "rms_norm", "speedup": 1.7}]

    text = _history(capsys, "--tracking-uri", uri)
    line = next(ln for ln in text.splitlines() if ids["agent"][:8] in ln)
    for cell in ("meta-llama/Llama-3.1-8B-Instruct", "claude-opus-4-6", "partial", "2/3",
                 "rms_norm 2.50x, silu_and_mul 1.20x", "0.97", "1.30x"):
        assert cell in line, (cell, line)
    assert text.index(ids["qwen"][:8]) < text.index(ids["agent"][:8]) < text.index(ids["failed"][:8])
    narrow = " ".join(_history(capsys, "--tracking-uri", uri, width=80).split())  # two lines a run, wrapped
    assert (f"{ids['agent'][:8]} partial meta-llama/Llama-3.1-8B-Instruct L1 claude-opus-4-6 passing 2/3 · "
            "best rms_norm 2.50x, silu_and_mul 1.20x · e2e match 0.97 · e2e speedup 1.30x") in narrow

    only = json.loads(_history(capsys, "--tracking-uri", uri, "--json", "--model", "Qwen/Qwen3-8B"))
    assert [r["run_id"] for r in only] == [ids["qwen"]]
    l1 = json.loads(_history(capsys, "--tracking-uri", uri, "--json", "--level", "1"))
    assert [r["run_id"] for r in l1] == [ids["qwen"], ids["agent"]]
    last = json.loads(_history(capsys, "--tracking-uri", uri, "--json", "--limit", "1"))
    assert [r["run_id"] for r in last] == [ids["qwen"]]


def test_history_of_one_run(store, capsys):
    uri, ids, art = store
    d = json.loads(_history(capsys, "--tracking-uri", uri, "--json", ids["agent"][:10]))
    assert d["summary"]["run_id"] == ids["agent"]
    kernels = {k["op"]: k for k in d["kernels"]}
    assert set(kernels) == {"rms_norm", "silu_and_mul", "rotary_embedding"}
    rms = kernels["rms_norm"]
    assert (rms["attempt"], rms["status"], rms["correct"], rms["passing"]) == (2, "correct", True, True)
    assert rms["speedup"] == pytest.approx(2.5) and rms["speedup_compile"] == pytest.approx(1.25)
    assert kernels["rotary_embedding"]["status"] == "failed" and kernels["rotary_embedding"]["passing"] is False
    assert sorted(c["name"] for c in d["children"]) == ["rms_norm", "rotary_embedding", "silu_and_mul"]
    assert d["params"]["flags.max_retries"] == "5" and d["params"]["max_tokens"] == "8192"
    for key in ("env.torch", "env.triton", "env.transformers", "gpu"):
        assert d["params"][key]
    assert d["metrics"]["tokens.output"] == 3400
    assert {k for k in d["metrics"] if k.startswith("seen.")} == {"seen.rms_norm", "seen.silu_and_mul", "seen.rotary_embedding"}
    assert d["e2e"]["shadow.rms_norm.max_err"] == pytest.approx(0.004)

    # the kernel's code is the artifact the tags point at, in the child run that logged it
    code = art / rms["run_id"] / "artifacts" / rms["artifact"]
    assert rms["artifact"] == "kernels/L1/rms_norm/attempt-2.py" and code.read_text() == RMS_CODE
    prompt = art / rms["run_id"] / "artifacts/attempts/rms_norm/1/prompt.md"
    assert prompt.read_text() == f"Write rms_norm. key={REDACTED} token {REDACTED}"
    table = json.loads((art / ids["agent"] / "artifacts/e2e/table.json").read_text())
    assert table["columns"] == ["metric", "value"]
    rows = dict(table["data"])
    assert (rows["token_match"], rows["shadow.rms_norm.worst_layer"], rows["notes.0"]) == ("0.97", "1", f"ran with {REDACTED}")

    text = _history(capsys, "--tracking-uri", uri, ids["agent"])
    assert "kernels: 2/3 passing" in text
    rms_line = next(ln for ln in text.splitlines() if "rms_norm" in ln and "attempt-2.py" in ln)
    assert "correct" in rms_line and "2.50x" in rms_line and "1.25x" in rms_line
    # a child's id opens its whole run
    child = json.loads(_history(capsys, "--tracking-uri", uri, "--json", rms["run_id"]))
    assert child["summary"]["run_id"] == ids["agent"]


def test_history_usage_errors_and_empty_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/none.db"
    assert "no tracked runs" in _history(capsys, "--tracking-uri", uri)
    assert json.loads(_history(capsys, "--tracking-uri", uri, "--json")) == []
    assert not (tmp_path / "none.db").exists()  # reading never creates a store
    assert cli.main(["history", "--tracking-uri", uri, "0123abcd"]) == 2
    assert "no tracked runs" in capsys.readouterr().err
    (tmp_path / "broken.db").write_bytes(b"not a database, a few bytes of something else")
    broken = f"sqlite:///{tmp_path}/broken.db"
    assert cli.main(["history", "--tracking-uri", broken]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the tracking store {broken} cannot be read (DatabaseError") and "\n" not in err, err


def test_no_secret_reaches_the_store(store):
    uri, ids, art = store
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fastkernels").experiment_id])
    assert len(runs) == 6  # 3 top-level + 3 op children
    logged = []
    for r in runs:
        logged += [r.info.run_name, *r.data.params, *r.data.params.values(), *r.data.tags,
                   *r.data.tags.values(), *r.data.metrics]
    files = [p for p in art.rglob("*") if p.is_file()]
    assert len(files) >= 20
    blobs = [p.read_bytes() for p in files] + [Path(uri.removeprefix("sqlite:///")).read_bytes()]
    for secret in ALL_SECRETS:
        assert not any(secret in s for s in logged), secret
        assert not any(secret.encode() in b for b in blobs), secret  # every artifact and the raw database
    agent = client.get_run(ids["agent"])
    assert agent.data.params["api_key"] == REDACTED and agent.data.params["max_tokens"] == "8192"
    assert agent.data.params["llm_base_url"] == f"https://llm.example/v1?key={REDACTED}"
    errors = [p.read_text() for p in art.rglob("error.txt")]  # scrubbed, not dropped
    assert errors and all(e == f"ImportError: 401 Authorization: Bearer {REDACTED}" for e in errors)


def test_scrub_rules(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-" + "z" * 20)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # short values are not secrets
    s = scrub("a tok-zzzzzzzzzzzzzzzzzzzz b sk-proj-abcdefghijklmnop0123 ghp_" + "A" * 36 + " AKIAABCDEFGHIJKLMNOP")
    assert s == f"a {REDACTED} b {REDACTED} {REDACTED} {REDACTED}"
    assert scrub('api_key = "abcdefghijklmnopqrstu"') == f'api_key = "{REDACTED}"'
    code = "token = tl.load(ptr + offs)\nmax_tokens = 4096\nx = False\n"
    assert scrub(code) == code  # kernel code is not mangled
    assert scrub_obj({"token": "abc123", "max_tokens": 10, "nested": [{"password": "hunter22"}], "ok": True}) == \
        {"token": REDACTED, "max_tokens": 10, "nested": [{"password": REDACTED}], "ok": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_mlflow_ui_serves_the_store(store, tmp_path):
    uri, ids, _ = store
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FAKE_PROVIDER_API_KEY": ENV_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "fastkernels.cli", "mlflow-ui", "--port", str(port),
                             "--tracking-uri", uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90  # the server takes 5-15 s to come up on a busy 2-core box
        while not any(line.startswith("ready:") for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "mlflow-ui not ready in 90 s:\n" + "".join(lines)
            time.sleep(0.2)
        assert any(base in line for line in lines)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 2  # fastkernels and the mlflow server (and its uvicorn)
        assert all(ENV_KEY not in " ".join(p.environ().values()) for p in family[1:])  # no keys in the server

        run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={ids['agent']}")["run"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["model"] == "meta-llama/Llama-3.1-8B-Instruct" and params["api_key"] == REDACTED
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["e2e.token_match"] == 0.97
        exp = run["info"]["experiment_id"]
        found = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp], "max_results": 50})["runs"]
        assert {r["info"]["run_id"] for r in found} >= set(ids.values())
        child = next(r for r in found if r["info"]["run_name"] == "rms_norm")
        q = urllib.parse.urlencode({"run_uuid": child["info"]["run_id"], "path": "kernels/L1/rms_norm/attempt-2.py"})
        with urllib.request.urlopen(f"{base}/get-artifact?{q}", timeout=10) as r:
            assert r.read().decode() == RMS_CODE
    finally:
        proc.send_signal(signal.SIGTERM)  # the command stops its server's whole process group
        try:
            rc = proc.wait(timeout=30)
        finally:
            leftovers = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            for p in leftovers:  # only what this test started
                p.kill()
    assert rc == 0, "".join(lines)
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive and not leftovers
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


_SCRIPT = textwrap.dedent("""
    import sys, time
    {block}
    from fastkernels.measure.e2e import E2EReport
    from fastkernels.measure.unit import UnitReport
    from fastkernels.track.tracking import tracker
    t0 = time.perf_counter()
    with tracker.start_run("agent", params={{"model": "m", "level": 1}}, root=True) as run:
        with tracker.start_run("rms_norm"):
            tracker.log_kernel("rms_norm", level=1, code="x", attempt=1, status="correct")
            tracker.log_unit("rms_norm", UnitReport(op="rms_norm", passed=True))
        tracker.log_e2e(E2EReport(model_id="m", level=1, tiny=True, candidates=[], passed=True, token_match=1.0))
        tracker.log_metrics({{"a": 1}})
        open({gate!r}, "w").close()  # only now may the (fake) MLflow import finish
    with tracker.start_run("again", root=True):
        tracker.log_text("t", "t.txt")
    print("finished", run.run_id, tracker.enabled, round(time.perf_counter() - t0, 2))
""")


@pytest.mark.parametrize("how", ["absent", "broken"])
def test_runs_go_on_without_mlflow(tmp_path, how):
    gate = tmp_path / "gate"
    if how == "absent":  # not installed: `import mlflow` raises ImportError
        block = "sys.modules['mlflow'] = None"
    else:  # installed but its import fails (a broken install): found first on sys.path. The import
        # waits for the gate the run opens after its log calls: had any call waited for MLflow, the
        # gate would never open and the error would say so.
        fake = tmp_path / "fake" / "mlflow"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(textwrap.dedent(f"""
            import os, time
            deadline = time.time() + 20
            while not os.path.exists({str(gate)!r}) and time.time() < deadline:
                time.sleep(0.01)
            raise RuntimeError("broken mlflow install" if os.path.exists({str(gate)!r}) else "gate never opened")
        """))
        block = f"sys.path.insert(0, {str(fake.parent)!r})"
    db = tmp_path / "m.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    env.pop("FASTKERNELS_TRACKING", None)
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(block=block, gate=str(gate))], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("finished None False"), out.stdout
    assert out.stderr.count("tracking is off") == 1, out.stderr  # one warning, not one per call
    assert ("not installed" if how == "absent" else "broken mlflow install") in out.stderr
    assert not db.exists()


def test_tracking_stays_off_the_import_path():
    code = ("import sys, fastkernels.cli, fastkernels.track.tracking, fastkernels.track.history\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'pandas', 'sqlalchemy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
