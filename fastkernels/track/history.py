"""Past runs read back from the tracking store (the layout `tracking.py` writes).

`list_runs()` gives one `RunSummary` per top-level run, newest first; `get_run(run_id)` gives a
`RunDetail`: the run's kernels (one per op, the newest record wins), their unit results, the
end-to-end metrics and the child runs. Reading imports MLflow (~1 s): this is for the CLI and the
cockpit's history view, never for a hot path."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fastkernels.errors import UsageError
from fastkernels.track.tracking import EXPERIMENT, resolve_tracking_uri, sqlite_path

#: Kernel statuses that count as passing (proven correct; "valid" only means it imported).
PASSING = frozenset({"correct", "approved", "passed"})
_KERNEL_TAG = re.compile(r"^kernel\.(?P<op>.+)\.(?P<field>level|attempt|backend|status|artifact|error)$")
# `op.{op}.speedup` (tracker.log_unit) or a plain `{op}.speedup` logged through log_metrics.
_OP_METRIC = re.compile(r"^(?:op\.(?P<op>.+)|(?P<plain>[^.]+))\.(?P<field>correct|speedup|speedup_compile)$")
_NOT_OPS = frozenset({"e2e", "unit"})
_RUN_ID = re.compile(r"^[0-9a-f]{4,32}$")


@dataclass
class KernelRecord:
    op: str
    level: int | None = None
    attempt: int | None = None
    backend: str | None = None
    status: str | None = None
    correct: bool | None = None
    speedup: float | None = None
    speedup_compile: float | None = None
    artifact: str | None = None
    error: str | None = None
    run_id: str | None = None  # the (child) run that holds it

    @property
    def passing(self) -> bool:
        if self.status is not None:
            return self.status in PASSING
        return bool(self.correct)


@dataclass
class RunSummary:
    run_id: str
    name: str
    start_time: float  # seconds since the epoch
    end_time: float | None
    mlflow_status: str  # RUNNING, FINISHED, FAILED, KILLED
    status: str  # our fastkernels.status tag ("finished", "failed", "interrupted", ...)
    model: str
    level: str
    backend: str
    kernels_total: int
    kernels_passing: int
    best_speedups: list[tuple[str, float]]  # passing ops, fastest first (at most 3)
    e2e_passed: bool | None
    e2e_token_match: float | None
    e2e_speedup: float | None

    @property
    def when(self) -> str:
        return _dt.datetime.fromtimestamp(self.start_time).strftime("%Y-%m-%d %H:%M")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["when"] = _dt.datetime.fromtimestamp(self.start_time).astimezone().isoformat(timespec="seconds")
        d["best_speedups"] = [{"op": op, "speedup": s} for op, s in self.best_speedups]
        return d


@dataclass
class RunDetail:
    summary: RunSummary
    params: dict[str, str]
    metrics: dict[str, float]
    kernels: list[KernelRecord]
    e2e: dict[str, float]
    children: list[dict[str, str]] = field(default_factory=list)  # run_id, name, status
    artifact_uri: str = ""

    def to_dict(self) -> dict:
        return {"summary": self.summary.to_dict(), "params": self.params, "metrics": self.metrics,
                "kernels": [asdict(k) | {"passing": k.passing} for k in self.kernels],
                "e2e": self.e2e, "children": self.children, "artifact_uri": self.artifact_uri}


# ---- reading ---------------------------------------------------------------------------------

def _open(uri: str | None):
    """(client, experiment id), or None when the store holds no fastkernels runs yet. Never
    creates a missing SQLite store."""
    uri = resolve_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise UsageError(f"reading history needs MLflow ({exc}); pip install mlflow") from None
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
    except Exception as exc:  # a store that is not one (a corrupt or foreign file): say so, in one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"the tracking store {uri} cannot be read ({type(exc).__name__}: {first}); move it "
                         "aside or point MLFLOW_TRACKING_URI / --tracking-uri at another") from None
    return (client, exp.experiment_id) if exp is not None else None


def _search(client, exp_id: str, filter_string: str, max_results: int | None = None) -> list:
    out: list = []
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"],
                                  max_results=min(max_results or 1000, 1000), page_token=token)
        out.extend(page)
        token = page.token
        if not token or (max_results is not None and len(out) >= max_results):
            return out[:max_results] if max_results is not None else out


def _quote(value: str, what: str) -> str:
    if "'" in value:
        raise UsageError(f"{what} cannot contain a quote: {value!r}")
    return f"'{value}'"


def _tree(client, exp_id: str, root) -> list:
    """The root run and all its descendants, oldest first."""
    rid = root.info.run_id
    runs = [r for r in _search(client, exp_id, f"tags.`fastkernels.root_id` = '{rid}'") if r.info.run_id != rid]
    return [root] + sorted(runs, key=lambda r: r.info.start_time)


def _kernels(runs: list) -> dict[str, KernelRecord]:
    """One record per op over a run tree; later runs (and later records) win."""
    ops: dict[str, KernelRecord] = {}
    for run in runs:
        for key, value in run.data.tags.items():
            if m := _KERNEL_TAG.match(key):
                rec = ops.setdefault(m["op"], KernelRecord(op=m["op"]))
                f = m["field"]
                setattr(rec, f, int(value) if f in ("level", "attempt") and value.lstrip("-").isdigit() else value)
                rec.run_id = run.info.run_id
        for key, value in run.data.metrics.items():
            if (m := _OP_METRIC.match(key)) and (op := m["op"] or m["plain"]) not in _NOT_OPS:
                rec = ops.setdefault(op, KernelRecord(op=op, run_id=run.info.run_id))
                setattr(rec, m["field"], bool(value) if m["field"] == "correct" else float(value))
    return ops


def _summary(root, runs: list) -> RunSummary:
    params, tags = root.data.params, root.data.tags
    kernels = _kernels(runs)
    passing = [k for k in kernels.values() if k.passing]
    best = sorted(((k.op, k.speedup) for k in passing if k.speedup is not None), key=lambda t: -t[1])[:3]
    e2e: dict[str, float] = {}
    for run in runs:
        e2e.update({k: v for k, v in run.data.metrics.items() if k.startswith("e2e.")})
    return RunSummary(
        run_id=root.info.run_id, name=root.info.run_name or "",
        start_time=root.info.start_time / 1000, end_time=root.info.end_time / 1000 if root.info.end_time else None,
        mlflow_status=root.info.status, status=tags.get("fastkernels.status", root.info.status.lower()),
        model=params.get("model", ""), level=params.get("level", ""),
        backend=params.get("backend") or params.get("llm_model", ""),
        # the agent's own totals when it logged them (they count resumed ops this run never logged)
        kernels_total=int(root.data.metrics.get("kernels_total", len(kernels))),
        kernels_passing=int(root.data.metrics.get("kernels_passing", len(passing))), best_speedups=best,
        e2e_passed=bool(e2e["e2e.passed"]) if "e2e.passed" in e2e else None,
        e2e_token_match=e2e.get("e2e.token_match"), e2e_speedup=e2e.get("e2e.speedup"),
    )


def list_runs(*, model: str | None = None, level: int | str | None = None, limit: int = 20,
              uri: str | None = None) -> list[RunSummary]:
    """Top-level runs, newest first, optionally only those of `model` / `level`."""
    opened = _open(uri)
    if opened is None:
        return []
    client, exp_id = opened
    filters = ["tags.`fastkernels.top` = '1'"]
    if model:
        filters.append(f"params.model = {_quote(model, 'a model id')}")
    if level is not None:
        filters.append(f"params.level = {_quote(str(level).upper().removeprefix('L'), 'a level')}")
    roots = _search(client, exp_id, " and ".join(filters), max_results=max(1, limit))
    return [_summary(r, _tree(client, exp_id, r)) for r in roots]


def get_run(run_id: str, *, uri: str | None = None) -> RunDetail:
    """One run (a full id, or a unique prefix of a recent top-level run's id) in detail."""
    if not _RUN_ID.match(run_id):
        raise UsageError(f"{run_id!r} is not a run id; `fastkernels history` lists them")
    opened = _open(uri)
    if opened is None:
        raise UsageError(f"no tracked runs in {resolve_tracking_uri(uri)}; `fastkernels agent` records them")
    client, exp_id = opened
    run = None
    if len(run_id) == 32:
        try:
            run = client.get_run(run_id)
        except Exception:
            run = None
    else:
        matches = [r for r in _search(client, exp_id, "tags.`fastkernels.top` = '1'", max_results=1000)
                   if r.info.run_id.startswith(run_id)]
        if len(matches) > 1:
            raise UsageError(f"run id prefix {run_id!r} matches {len(matches)} runs; give more characters")
        run = matches[0] if matches else None
    if run is None:
        raise UsageError(f"no run {run_id!r} in {resolve_tracking_uri(uri)}; `fastkernels history` lists them")
    if run.data.tags.get("fastkernels.top") != "1":  # a child run: show its whole tree
        root_id = run.data.tags.get("fastkernels.root_id")
        if root_id and root_id != run.info.run_id:
            run = client.get_run(root_id)
    runs = _tree(client, run.info.experiment_id, run)
    kernels = sorted(_kernels(runs).values(), key=lambda k: k.op)
    e2e: dict[str, float] = {}
    for r in runs:
        e2e.update({k.removeprefix("e2e."): v for k, v in r.data.metrics.items() if k.startswith("e2e.")})
    children = [{"run_id": r.info.run_id, "name": r.info.run_name or "", "status": r.data.tags.get("fastkernels.status", r.info.status.lower())}
                for r in runs[1:]]
    return RunDetail(summary=_summary(run, runs), params=dict(run.data.params), metrics=dict(run.data.metrics),
                     kernels=kernels, e2e=e2e, children=children, artifact_uri=run.info.artifact_uri)


def fmt_value(x: Any, kind: str = "") -> str:
    """How the CLI shows a number: ratios as 0.97, speedups as 1.31x, missing as -."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if kind == "x":
        return f"{x:.2f}x"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def as_dicts(items: list[Any]) -> list[dict]:
    return [i.to_dict() for i in items]


# ---- the MLflow UI ---------------------------------------------------------------------------

def mlflow_ui_command(port: int, uri: str | None = None) -> list[str]:
    """`mlflow server` on 127.0.0.1:`port` against the tracking store (one worker: a local UI)."""
    import sys

    from fastkernels.track.tracking import artifact_root

    uri = resolve_tracking_uri(uri)
    if uri.startswith(("http://", "https://", "databricks")):
        raise UsageError(f"the tracking store {uri} is already a server: open it in a browser")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--uvicorn-opts", "--log-level warning"]
    root = artifact_root(uri)
    if root is not None:  # experiments made from the UI keep their artifacts beside the store too
        cmd += ["--default-artifact-root", root]
    return cmd


def start_mlflow_ui(port: int, uri: str | None = None):
    """Start the MLflow server in its own session (so it and its workers stop as one group) with
    no secrets in its environment; return (process, url). Raises UsageError if the port is taken."""
    import os
    import socket
    import subprocess

    from fastkernels.rules.secrets import scrubbed_environ

    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a port number (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"port {port} on 127.0.0.1 is in use; pick another with --port") from None
    cmd = mlflow_ui_command(port, uri)
    db = sqlite_path(resolve_tracking_uri(uri))
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    env = scrubbed_environ()
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # its job runner: 8 more processes, unused here
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, cwd=str(db.parent) if db else os.getcwd())
    return proc, f"http://127.0.0.1:{port}"


def wait_mlflow_ui(proc, url: str, timeout: float = 120.0) -> bool:
    """Poll `url`/health until the server answers (True), exits, or `timeout` passes (False)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def stop_mlflow_ui(proc, grace: float = 10.0) -> None:
    """Stop the server and every process of its session: SIGTERM, SIGKILL after `grace` s."""
    import os
    import signal
    import time

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.poll()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or it stays in the group as a zombie
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
