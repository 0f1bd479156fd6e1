"""Experiment tracking: every `fastkernels agent` invocation is an MLflow run.

(Over 500 lines on purpose: the public API, the run handles and the one writer thread that owns
MLflow share a queue and its ordering; split, each half would reach into the other's state.)

    from fastkernels.track.tracking import tracker

    with tracker.start_run("agent", params={"model": m, "level": 1, "backend": "library"}, root=True):
        with tracker.start_run("rms_norm"):                      # a child run (any thread)
            tracker.log_attempt("rms_norm", 1, prompt=p, reply=r, code=c, level=1, status="valid")
            tracker.log_unit("rms_norm", unit_report, attempt=1)
        tracker.log_e2e(e2e_report)
        tracker.set_status("finished")

What a run holds (`history.py` reads exactly this back):

- every run: tag `fastkernels.root_id` (the id of the top-level run of its tree); a top-level run
  also has tag `fastkernels.top`; a child run has MLflow's own `mlflow.parentRunId`.
- top-level params: what the caller passed (history reads `model`, `level`, `backend`) plus
  `env.python`, `env.torch`, `env.triton`, `env.transformers`, `env.mlflow`, `env.fastkernels`
  and `gpu` (NVML's name of GPU 0, or "none") unless the caller gave them.
- kernels: artifact `kernels/L{level}/{op}/attempt-{n}.py` (or `kernels/L{level}/{op}.py` without
  an attempt), tags `kernel.{op}.level|attempt|backend|status|artifact`.
- attempts: artifacts `attempts/{op}/{n}/prompt.md|reply.md|error.txt`.
- unit results: artifact `unit/{op}.json` (`unit/{op}/attempt-{n}.json`), metrics
  `op.{op}.correct` (1/0), `op.{op}.speedup`, `op.{op}.speedup_compile` (step = attempt) and every
  numeric leaf of the report as `unit.{op}.{path}`.
- end to end: artifacts `e2e/report.json` and `e2e/table.json` (an MLflow table: metric, value),
  metrics `e2e.token_match`, `e2e.speedup`, `e2e.passed` and every numeric leaf as `e2e.{path}`.
- run totals: metrics `kernels_passing` and `kernels_total` on the top-level run, when logged,
  are what history shows (the agent's own count, resumed operators included); without them
  history counts the kernels whose status is correct/approved/passed.
- status: tag `fastkernels.status` ("finished" unless `set_status` said otherwise, "failed" or
  "interrupted" when the block raised), MLflow status FINISHED / FAILED / KILLED.

MLflow never runs on the caller's thread: a call queues a job and returns; one writer thread
imports MLflow, opens the store and performs the jobs in order (so the agent's worker threads
never contend for the store and never wait for it). Measured on a 2-core CPU box: importing MLflow
costs 1.0 s of CPU, creating a fresh SQLite store (its schema migrations) 1.5 s of CPU and, with the
disk shared by busy neighbours, up to 12 s of wall time (each migration commits); reopening it
takes 8 ms. A top-level run waits for the writer only when it ends (`flush`, at most 60 s). Without
MLflow, or when the store fails, runs go on untracked and one warning says so.

Secrets never reach the store: every param, tag, metric key, run name and artifact passes
`scrub`/`scrub_obj` (fastkernels.rules.secrets), which blanks the values of secret-named environment variables (`*_API_KEY`,
`*TOKEN*`, `*SECRET*`, ...), anything shaped like a known key (`sk-...`, `hf_...`, `ghp_...`,
`AKIA...`, bearer tokens, `api_key=...`), and the value of any secret-named param or field.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import numbers
import os
import platform
import queue
import re
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from fastkernels.rules.secrets import REDACTED, is_secret_field, scrub, scrub_obj

log = logging.getLogger(__name__)


class Reported(Protocol):
    """A typed report (UnitReport, E2EReport): the whole as a dict once, for the artifact, and its
    headline figures, named by the report itself (tracking never guesses a key)."""

    def to_dict(self) -> dict: ...

    def metrics(self) -> dict[str, float]: ...

EXPERIMENT = "fastkernels"
#: FASTKERNELS_TRACKING=0 (or off/false/no) turns tracking off for the process.
TRACKING_ENV = "FASTKERNELS_TRACKING"

# MLflow's own limits (mlflow.utils.validation): longer values are rejected, so we truncate.
_MAX_PARAM_VAL = 6000
_MAX_TAG_VAL = 8000
_MAX_KEY = 250
_MAX_LEAF_METRICS = 300  # per report: a per-shape report has tens of leaves, never thousands


# ---- where the store lives ---------------------------------------------------------------------

def default_store_dir() -> Path:
    """`<user data dir>/fastkernels`, where the default SQLite store and its artifacts live."""
    import platformdirs

    return platformdirs.user_data_path("fastkernels")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The store to use: `uri` (from `--tracking-uri` / `tracker.configure`), else
    `MLFLOW_TRACKING_URI`, else `sqlite:///<user data dir>/fastkernels/mlflow.db`. A bare path
    ending in .db/.sqlite becomes a SQLite URI."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return "sqlite:///" + str(default_store_dir() / "mlflow.db")
    if "://" not in uri and not uri.startswith("file:") and uri.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite:///" + str(Path(uri).expanduser().resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local `sqlite:///` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside it in `mlartifacts/`; other stores keep
    MLflow's own default."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


# ---- flattening ------------------------------------------------------------------------------

_KEY_BAD = re.compile(r"[^\w\-. /]")  # MLflow keys: alphanumerics, _ - . space /


def _key(k: Any) -> str:
    return _KEY_BAD.sub("_", scrub(k))[:_MAX_KEY] or "_"


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted.path, leaf) pairs of nested dicts and lists (list items by index)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, obj


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, numbers.Real):  # int, float, numpy scalars
        return float(v)
    return None


def _param_str(v: Any) -> str:
    if isinstance(v, str):
        s = v
    elif isinstance(v, (list, tuple, dict)):
        s = json.dumps(v, default=str, sort_keys=True)
    else:
        s = str(v)
    return s[:_MAX_PARAM_VAL]


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (params or {}).items():
        if isinstance(v, Mapping):  # {"flags": {"tp": 1}} -> flags.tp
            for sub, leaf in _flatten(v, str(k)):
                out[_key(sub)] = REDACTED if is_secret_field(sub) and leaf else scrub(_param_str(leaf))
            continue
        out[_key(k)] = REDACTED if (is_secret_field(k) and v not in (None, "", False)) else scrub(_param_str(v))
    return out


def _clean_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {_key(k): (REDACTED if is_secret_field(k) and v else scrub(v)[:_MAX_TAG_VAL])
            for k, v in (tags or {}).items() if v is not None}


def _clean_metrics(metrics: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for path, leaf in _flatten(metrics or {}, prefix):
        x = _number(leaf)
        if x is not None:
            out[_key(path)] = x
    return out


def environment_params() -> dict[str, str]:
    """Versions and GPU of this machine, logged on every top-level run. Cheap: package metadata
    and NVML only (no torch import, no CUDA context)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"env.python": platform.python_version(), "env.platform": platform.platform(terse=True)}
    for pkg in ("fastkernels", "torch", "triton", "transformers", "mlflow"):
        try:
            out[f"env.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"env.{pkg}"] = "absent"
    out["gpu"] = _gpu_name()
    return out


def _gpu_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            n = pynvml.nvmlDeviceGetCount()
            if n == 0:
                return "none"
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            name = name.decode() if isinstance(name, bytes) else name
            return f"{name} x{n}" if n > 1 else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML: a CPU machine
        return "none"


# ---- runs ------------------------------------------------------------------------------------

class RunHandle:
    """One tracked run. Its methods log into this run explicitly, from any thread. `run_id`
    waits for the writer to create the run (None when tracking is off)."""

    def __init__(self, tracker: "Tracker", name: str, parent: "RunHandle | None") -> None:
        self.tracker = tracker
        self.name = name
        self.parent = parent
        self.root: RunHandle = parent.root if parent is not None else self
        self.status: str | None = None
        self._created: Future = Future()  # -> (client, run_id, experiment_id) or None
        self.open = True

    @property
    def run_id(self) -> str | None:
        created = self._result(timeout=120)
        return created[1] if created else None

    def _result(self, timeout: float | None = None):
        try:
            return self._created.result(timeout=timeout)
        except FutureTimeout:
            return None

    def __repr__(self) -> str:
        done = self._created.done() and self._created.result()
        return f"RunHandle({self.name!r}, run_id={done[1] if done else None!r})"

    # Delegates, so code holding a handle never needs the module-level tracker.
    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(params, run=self)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.tracker.log_metrics(metrics, step=step, run=self)

    def log_kernel(self, op_name: str, **kw) -> None:
        self.tracker.log_kernel(op_name, run=self, **kw)

    def log_attempt(self, op_name: str, attempt: int, **kw) -> None:
        self.tracker.log_attempt(op_name, attempt, run=self, **kw)

    def log_text(self, text: str, artifact_path: str) -> None:
        self.tracker.log_text(text, artifact_path, run=self)

    def log_dict(self, obj: Any, artifact_path: str) -> None:
        self.tracker.log_dict(obj, artifact_path, run=self)

    def log_unit(self, op_name: str, report: Reported, **kw) -> None:
        self.tracker.log_unit(op_name, report, run=self, **kw)

    def log_e2e(self, report: Reported, **kw) -> None:
        self.tracker.log_e2e(report, run=self, **kw)

    def set_status(self, status: str) -> None:
        self.tracker.set_status(status, run=self)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker.set_tags(tags, run=self)


class Tracker:
    """The process's tracker (use the module-level `tracker`). Thread-safe; every log call
    returns at once and is a no-op when there is no open run or tracking is off."""

    def __init__(self) -> None:
        self._uri: str | None = None
        self._enabled_override: bool | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._roots: list[RunHandle] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client = None  # MlflowClient, created on the writer thread
        self._client_uri: str | None = None
        self._experiment_id: str | None = None
        self._failed: dict[str, str] = {}  # uri (or "import") -> why
        self._warned: set[str] = set()
        self._job_errors = 0
        self.disabled_reason: str | None = None
        self.startup_seconds: float | None = None  # MLflow import + store open, once measured
        atexit.register(self._at_exit)

    # ---- configuration

    def configure(self, uri: str | None = None, *, enabled: bool | None = None) -> None:
        """Choose the store (`uri` wins over MLFLOW_TRACKING_URI) and turn tracking on or off
        (None: as FASTKERNELS_TRACKING says, on by default). `configure()` restores the
        defaults. Not while a run is open."""
        with self._lock:
            if self._roots:
                raise RuntimeError("tracker.configure() while a run is open")
        self.flush(timeout=30)
        self._uri = uri
        self._enabled_override = enabled
        self._failed.pop(self.tracking_uri, None)
        self.disabled_reason = None

    @property
    def tracking_uri(self) -> str:
        return resolve_tracking_uri(self._uri)

    @property
    def wanted(self) -> bool:
        """Tracking asked for (not turned off by configure or FASTKERNELS_TRACKING)."""
        if self._enabled_override is not None:
            return self._enabled_override
        return os.environ.get(TRACKING_ENV, "1").strip().lower() not in ("0", "off", "false", "no")

    @property
    def enabled(self) -> bool:
        """True when runs are (or will be) recorded: tracking wanted, MLflow installed, and
        neither its import nor the current store has failed."""
        return (self.wanted and "import" not in self._failed and self.tracking_uri not in self._failed
                and _mlflow_installed())

    # ---- runs

    def current_run(self) -> RunHandle | None:
        """This thread's innermost open run, else the newest open top-level run (so worker
        threads of an agent run log into it)."""
        stack = getattr(self._local, "stack", None)
        if stack:
            return stack[-1]
        with self._lock:
            return self._roots[-1] if self._roots else None

    @contextlib.contextmanager
    def start_run(self, name: str, params: Mapping[str, Any] | None = None, *,
                  tags: Mapping[str, Any] | None = None, root: bool = False,
                  parent: RunHandle | None = None) -> Iterator[RunHandle]:
        """Open a run for the `with` block and yield its RunHandle. It is a child of `parent`,
        else of `current_run()`; `root=True` forces a new top-level run (one per agent
        invocation). On exit the run ends FINISHED, or FAILED / KILLED (KeyboardInterrupt) when
        the block raised; a top-level run then waits (bounded) for its records to be written."""
        if root:
            parent = None
        elif parent is None:
            parent = self.current_run()
        handle = RunHandle(self, scrub(name), parent)
        is_root = parent is None
        # Queue its creation before other threads can see it: a child's creation job then always
        # runs after its parent's (the writer is FIFO).
        if parent is not None and parent._created.done() and parent._created.result() is None:
            handle._created.set_result(None)  # an untracked parent has untracked children
        elif self._check_enabled():
            self._submit(self._job_create, handle, _clean_params(params), _clean_tags(tags), self.tracking_uri)
        else:
            handle._created.set_result(None)
        stack = self._stack()
        stack.append(handle)
        if is_root:
            with self._lock:
                self._roots.append(handle)
        outcome, status = "FINISHED", None
        try:
            yield handle
        except KeyboardInterrupt:
            outcome, status = "KILLED", "interrupted"
            raise
        except BaseException as exc:
            outcome, status = "FAILED", "failed"
            self.set_tags({"fastkernels.error": f"{type(exc).__name__}: {exc}"[:2000]}, run=handle)
            raise
        finally:
            handle.open = False
            if status is None:
                status = handle.status or "finished"
            if self._target(handle) is not None:
                self._submit(self._job_end, handle, outcome, status)
            if handle in stack:
                stack.remove(handle)
            if is_root:
                with self._lock:
                    self._roots.remove(handle)
                if not self.flush(timeout=60):
                    self._warn_once("slow", "tracking: the store is still writing after 60 s; giving up waiting")

    def _stack(self) -> list[RunHandle]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    # ---- logging (all return at once; no-ops without an open run)

    def log_params(self, params: Mapping[str, Any], *, run: RunHandle | None = None) -> None:
        """Params (nested dicts flattened as a.b). MLflow params are write-once per run."""
        if (run := self._target(run)) is not None:
            self._submit(self._job_batch, run, _clean_params(params), {}, {}, None)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, *,
                    run: RunHandle | None = None) -> None:
        """Numeric values (bools as 1/0; nested dicts flattened as a.b; others dropped)."""
        if (run := self._target(run)) is not None:
            self._submit(self._job_batch, run, {}, _clean_metrics(metrics), {}, step)

    def set_tags(self, tags: Mapping[str, Any], *, run: RunHandle | None = None) -> None:
        if (run := self._target(run)) is not None:
            self._submit(self._job_batch, run, {}, {}, _clean_tags(tags), None)

    def set_status(self, status: str, *, run: RunHandle | None = None) -> None:
        """The run's `fastkernels.status` tag (e.g. "finished", "partial", "failed"); kept when
        the run ends normally."""
        if (run := self._target(run)) is not None:
            run.status = status
            self.set_tags({"fastkernels.status": status}, run=run)

    def log_text(self, text: str, artifact_path: str, *, run: RunHandle | None = None) -> None:
        """A text artifact (prompt, reply, error, log) at `artifact_path` inside the run."""
        if (run := self._target(run)) is not None and text is not None:
            self._submit(self._job_text, run, scrub(text), _artifact_path(artifact_path))

    def log_dict(self, obj: Any, artifact_path: str, *, run: RunHandle | None = None) -> None:
        """A JSON artifact."""
        if (run := self._target(run)) is not None:
            text = json.dumps(scrub_obj(obj), indent=2, sort_keys=True, default=str)
            self._submit(self._job_text, run, text, _artifact_path(artifact_path))

    def log_kernel(self, op_name: str, *, level: int, code: str, attempt: int | None = None,
                   backend: str | None = None, status: str | None = None,
                   run: RunHandle | None = None) -> None:
        """Kernel source as artifact `kernels/L{level}/{op}/attempt-{n}.py` (or
        `kernels/L{level}/{op}.py`), with tags `kernel.{op}.level|attempt|backend|status|artifact`
        (the latest call wins, so they describe the op's newest kernel)."""
        if (run := self._target(run)) is None:
            return
        path = f"kernels/L{level}/{op_name}.py" if attempt is None else f"kernels/L{level}/{op_name}/attempt-{attempt}.py"
        path = _artifact_path(path)
        tags = {"level": level, "attempt": attempt, "backend": backend, "status": status, "artifact": path}
        self._submit(self._job_text, run, scrub(code or ""), path)
        self.set_tags({f"kernel.{op_name}.{k}": v for k, v in tags.items() if v is not None}, run=run)

    def log_attempt(self, op_name: str, attempt: int, *, prompt: str | None = None,
                    reply: str | None = None, code: str | None = None, error: str | None = None,
                    level: int | None = None, backend: str | None = None, status: str | None = None,
                    run: RunHandle | None = None) -> None:
        """One generation attempt: `attempts/{op}/{n}/prompt.md`, `reply.md`, `error.txt`, and
        its code through `log_kernel` (or `attempts/{op}/{n}/code.py` when `level` is None)."""
        if (run := self._target(run)) is None:
            return
        base = f"attempts/{op_name}/{attempt}"
        for text, name in ((prompt, "prompt.md"), (reply, "reply.md"), (error, "error.txt")):
            if text:
                self.log_text(text, f"{base}/{name}", run=run)
        if code is not None:
            if level is not None:
                self.log_kernel(op_name, level=level, code=code, attempt=attempt, backend=backend,
                                status=status, run=run)
            else:
                self.log_text(code, f"{base}/code.py", run=run)
        if error:
            self.set_tags({f"kernel.{op_name}.error": error.strip().splitlines()[-1][:500] if error.strip() else ""}, run=run)

    def log_unit(self, op_name: str, report: Reported, *, attempt: int | None = None,
                 run: RunHandle | None = None) -> None:
        """A unit-benchmark report (a `fastkernels.measure.unit.UnitReport`): artifact
        `unit/{op}.json`, its own figures `report.metrics()` as `op.{op}.{name}` (correct, speedup,
        speedup_compile; step = attempt) and every numeric leaf as `unit.{op}.{path}`."""
        if (run := self._target(run)) is None:
            return
        data = scrub_obj(report.to_dict())
        path = f"unit/{op_name}.json" if attempt is None else f"unit/{op_name}/attempt-{attempt}.json"
        self._submit(self._job_text, run, json.dumps(data, indent=2, sort_keys=True, default=str), _artifact_path(path))
        metrics = dict(list(_clean_metrics(data, f"unit.{op_name}").items())[:_MAX_LEAF_METRICS])
        metrics.update({_key(f"op.{op_name}.{k}"): float(v) for k, v in report.metrics().items()})
        self._submit(self._job_batch, run, {}, metrics, {}, attempt)

    def log_e2e(self, report: Reported, *, run: RunHandle | None = None) -> None:
        """An end-to-end report (a `fastkernels.measure.e2e.E2EReport`): artifacts
        `e2e/report.json` and the table `e2e/table.json` (metric, value), its own figures
        `report.metrics()` as `e2e.{name}` (passed, token_match, speedup: decode over eager, ...)
        and every numeric leaf as `e2e.{path}`."""
        if (run := self._target(run)) is None:
            return
        data = scrub_obj(report.to_dict())
        self._submit(self._job_text, run, json.dumps(data, indent=2, sort_keys=True, default=str), "e2e/report.json")
        rows = [(p, v) for p, v in _flatten(data) if v is None or isinstance(v, (str, bool, int, float))]
        table = {"metric": [p for p, _ in rows], "value": [("" if v is None else str(v)) for _, v in rows]}
        self._submit(self._job_table, run, table, "e2e/table.json")
        metrics = dict(list(_clean_metrics(data, "e2e").items())[:_MAX_LEAF_METRICS])
        metrics.update({f"e2e.{k}": float(v) for k, v in report.metrics().items()})
        self._submit(self._job_batch, run, {}, metrics, {}, None)

    # ---- the writer

    def flush(self, timeout: float | None = 60) -> bool:
        """Wait until everything queued so far is written. False on timeout."""
        if self._thread is None or not self._thread.is_alive() or threading.current_thread() is self._thread:
            return True
        done = threading.Event()
        self._queue.put((done.set, ()))
        return done.wait(timeout)

    def _target(self, run: RunHandle | None) -> RunHandle | None:
        run = run if run is not None else self.current_run()
        if run is None or (run._created.done() and run._created.result() is None):
            return None
        return run

    def _check_enabled(self) -> bool:
        if not self.wanted:
            return False
        if not _mlflow_installed():
            self._disable("import", "MLflow is not installed (pip install mlflow)")
            return False
        return self.enabled

    def _submit(self, fn: Callable, *args) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._writer, name="fastkernels-tracking", daemon=True)
                    self._thread.start()
        self._queue.put((fn, args))

    def _writer(self) -> None:
        while True:
            fn, args = self._queue.get()
            try:
                fn(*args)
            except Exception as exc:  # one record lost, tracking goes on
                self._job_errors += 1
                if self._job_errors <= 5:
                    log.warning("tracking: %s failed: %s", getattr(fn, "__name__", fn), scrub(exc))
                if self._job_errors == 5:
                    log.warning("tracking: further tracking errors are not shown")

    def _open_store(self, uri: str):
        """(client, experiment id) for `uri`, created on first use; None when it fails."""
        if self._client is not None and self._client_uri == uri:
            return self._client
        if "import" in self._failed or uri in self._failed:
            return None
        t0 = time.perf_counter()
        try:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network from a tracking call
            from mlflow import MlflowClient  # ~1.0 s
        except Exception as exc:
            self._disable("import", f"MLflow failed to import ({type(exc).__name__}: {exc})")
            return None
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)  # "Updating database tables" on every new store
        try:
            db = sqlite_path(uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                try:
                    exp_id = client.create_experiment(EXPERIMENT, artifact_location=artifact_root(uri))
                except Exception:  # another process created it first
                    exp = client.get_experiment_by_name(EXPERIMENT)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
        except Exception as exc:
            self._disable(uri, f"the store {uri} failed ({type(exc).__name__}: {scrub(exc)})")
            return None
        self._client, self._client_uri, self._experiment_id = client, uri, exp_id
        self.startup_seconds = time.perf_counter() - t0
        return client

    def _disable(self, key: str, reason: str) -> None:
        self._failed[key] = reason
        self.disabled_reason = reason
        self._warn_once(key, f"tracking is off: {reason}; runs go on untracked")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _job_create(self, handle: RunHandle, params: dict, tags: dict, uri: str) -> None:
        try:
            parent = handle.parent._result(timeout=0) if handle.parent is not None else None
            if handle.parent is not None and parent is None:  # the parent is untracked: so is this
                handle._created.set_result(None)
                return
            client = parent[0] if parent else self._open_store(uri)
            if client is None:
                handle._created.set_result(None)
                return
            exp_id = parent[2] if parent else self._experiment_id
            if parent:
                root = handle.root._result(timeout=0)
                tags = {**tags, "mlflow.parentRunId": parent[1], "fastkernels.root_id": root[1] if root else parent[1]}
            else:
                tags = {**tags, "fastkernels.top": "1"}
                params = {**environment_params(), **params}
            run = client.create_run(exp_id, run_name=handle.name, tags=tags)
            run_id = run.info.run_id
            if not parent:
                tags = {"fastkernels.root_id": run_id}
                self._log_batch(client, run_id, params, {}, tags, None)
            elif params:
                self._log_batch(client, run_id, params, {}, {}, None)
            handle._created.set_result((client, run_id, exp_id))
        except BaseException:
            if not handle._created.done():
                handle._created.set_result(None)
            raise

    @staticmethod
    def _log_batch(client, run_id: str, params: dict, metrics: dict, tags: dict, step: int | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ps = [Param(k, v) for k, v in params.items()]
        ts = [RunTag(k, v) for k, v in tags.items()]
        ms = [Metric(k, v, now, step or 0) for k, v in metrics.items()]
        for i in range(0, max(len(ps), len(ts), 1), 100):  # MLflow: 100 params/tags per batch
            client.log_batch(run_id, params=ps[i:i + 100], tags=ts[i:i + 100])
        for i in range(0, len(ms), 1000):
            client.log_batch(run_id, metrics=ms[i:i + 1000])

    def _job_batch(self, handle: RunHandle, params: dict, metrics: dict, tags: dict, step: int | None) -> None:
        created = handle._result(timeout=0)
        if created:
            self._log_batch(created[0], created[1], params, metrics, tags, step)

    def _job_text(self, handle: RunHandle, text: str, path: str) -> None:
        created = handle._result(timeout=0)
        if created:
            created[0].log_text(created[1], text, path)

    def _job_table(self, handle: RunHandle, table: dict, path: str) -> None:
        created = handle._result(timeout=0)
        if created:
            try:
                created[0].log_table(created[1], data=table, artifact_file=path)
            except ImportError:  # log_table needs pandas
                created[0].log_dict(created[1], table, path)

    def _job_end(self, handle: RunHandle, outcome: str, status: str) -> None:
        created = handle._result(timeout=0)
        if created:
            client, run_id, _ = created
            client.set_tag(run_id, "fastkernels.status", status)
            client.set_terminated(run_id, status=outcome)

    def _at_exit(self) -> None:
        self.flush(timeout=10)


def _artifact_path(path: str) -> str:
    parts = [re.sub(r"[^\w\-. ]", "_", scrub(p)) for p in str(path).replace("\\", "/").split("/")]
    return "/".join(p for p in parts if p not in ("", ".", "..")) or "artifact.txt"


_installed: bool | None = None


def _mlflow_installed() -> bool:
    """Whether `import mlflow` can work, without importing it (find_spec: ~1 ms, cached)."""
    global _installed
    if "mlflow" in sys.modules:
        return sys.modules["mlflow"] is not None
    if _installed is None:
        try:
            _installed = importlib.util.find_spec("mlflow") is not None
        except (ImportError, ValueError):
            _installed = False
    return _installed


tracker = Tracker()
