"""Run one job of untrusted code in a child process, so that whatever it does costs that job only.

`run_job(function, payload, timeout=..., label=...)` starts a fresh interpreter
(the same Python, never a fork: a forked child would share the parent's CUDA context and threads),
in its own session (so a timeout kills the whole process group, grandchildren included), in its own
temporary working directory, with an allow-listed environment (no API keys, tokens or anything
else a kernel has no use for: fastkernels.rules.secrets.sandbox_environ). The child calls
`function(payload)` and writes its JSON result to a file; the parent classifies what happened:

    ok          the function returned; `value` is its result
    exception   it raised; `error` names the exception (the traceback is in `stderr_tail`)
    timeout     it ran past `timeout` seconds; its process group was killed
    crash       it died without reporting (segfault, abort, os._exit, killed by a signal)
    oom         out of memory (torch/CUDA OOM, MemoryError, or killed by the kernel's OOM killer)
    cuda_error  a CUDA error (illegal memory access, device-side assert...) poisoned the context
    cancelled   the caller set `cancel`; its process group was killed

Every failure carries one line that says which job (`label`) failed and how.

`warm=("torch", ...)`: most of a job's start is the interpreter and `import torch` (seconds; on a
GPU also the CUDA context). Once `prewarm` has turned warm starts on for a kind of job (same
environment, same preloads), the child for the NEXT job of that kind is started as soon as one is
handed out: it imports those modules (and opens the CUDA context when it will use a GPU), then
waits for its job. Isolation is unchanged: every job still runs in a process of its own that has run
nothing else, and only our own modules and the frameworks are imported before the job's payload
arrives. A waiting child ends when its parent does (it reads EOF); `shutdown_warm()` ends them at
once. Without `prewarm`, `warm` changes nothing (a one-off job would only pay for a spare child).

This module imports only the standard library: the child starts by importing it, and the cost of
a job's start is one interpreter start plus whatever its function imports (torch is the big one).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fastkernels.rules.secrets import sandbox_environ

KINDS = ("ok", "exception", "timeout", "crash", "oom", "cuda_error", "cancelled")
STDERR_TAIL = 4000
HANG_DUMP_WAIT_S = 0.5  # a timed-out job's stack dump, then the kill
HANG_DUMP_TAIL = 16000  # how much of its stderr to search for the dump
FILE_LIMIT_MB = 4096  # the largest file a job may write (its stderr included)
WATCHDOG_PERIOD_S = 0.2  # how often a job checks that the process that started it is still there
_RESULT = "result.json"
_PAYLOAD = "payload.json"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder that holds the fastkernels package

CUDA_ERROR_MARKERS = ("CUDA error", "illegal memory access", "device-side assert", "cudaError",
                 "CUBLAS_STATUS", "CUDNN_STATUS", "unspecified launch failure", "misaligned address")
_OOM_MARKERS = ("out of memory", "OutOfMemoryError", "MemoryError", "Cannot allocate memory")


@dataclass
class JobResult:
    ok: bool
    kind: str
    value: object = None
    error: str = ""
    stderr_tail: str = ""
    seconds: float = 0.0
    label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def cuda_present() -> bool:
    """Whether this machine has a usable NVIDIA GPU, decided without importing torch (cheap; the
    child uses it to choose the Triton interpreter before triton is imported)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    if "torch" in sys.modules:
        try:
            return bool(sys.modules["torch"].cuda.is_available())
        except Exception:
            return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def child_env(env: dict | None = None) -> dict:
    """A job's environment: the allow-listed part of `env` (fastkernels.rules.secrets), with this
    package importable."""
    base = sandbox_environ(os.environ if env is None else env)
    path = base.get("PYTHONPATH", "")
    base["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    base.setdefault("PYTHONUNBUFFERED", "1")
    base.setdefault("TOKENIZERS_PARALLELISM", "false")
    return base


def _tail(path: Path, limit: int = STDERR_TAIL) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


_DUMP_HEAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-fA-F]+ .*\(most recent call first\):")
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def hang_site(text: str, frames: int = 3) -> str:
    """Where a timed-out job was, from the faulthandler dump in its stderr: the innermost `frames`
    frames of the thread that took the signal (the main thread), innermost first, as
    "file:line in function" (file names only); a frame of the candidate's own file goes first."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if _DUMP_HEAD.match(line)]
    if not heads:
        return ""
    current = [i for i in heads if lines[i].startswith("Current thread")]
    first = (current or heads)[-1] + 1
    found = []
    for line in lines[first:]:
        m = _FRAME.match(line)
        if m is None:
            break
        found.append(m)
    if not found:
        return ""
    own = [m for m in found if os.path.basename(m["file"]).startswith("candidate")][:1]
    pick = (own + [m for m in found if m not in own])[:frames]
    return ", called from ".join(f"{os.path.basename(m['file'])}:{m['line']} in {m['func']}" for m in pick)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _signal_name(num: int) -> str:
    try:
        name = signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
    meaning = {"SIGSEGV": "segmentation fault", "SIGABRT": "abort", "SIGBUS": "bus error",
               "SIGFPE": "floating-point exception", "SIGILL": "illegal instruction",
               "SIGKILL": "killed"}.get(name)
    return f"{name} ({meaning})" if meaning else name


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def is_cuda_error(text: str) -> bool:
    """Whether an error message says the CUDA context is poisoned (nothing more can run in it)."""
    return any(m in text for m in CUDA_ERROR_MARKERS)


def _classify_text(text: str) -> str | None:
    if is_cuda_error(text):
        return "cuda_error"
    if any(m in text for m in _OOM_MARKERS):
        return "oom"
    return None


class _Child:
    """A spawned child waiting for (warm) or given (cold) its job, with its directories."""

    def __init__(self, environ: dict, cwd: str | None = None, preload: tuple[str, ...] = ()) -> None:
        # its own temporary working directory (removed afterwards) unless the caller gave one
        self.own_dir = cwd is None
        self.workdir = Path(tempfile.mkdtemp(prefix="fk-job-")) if self.own_dir else Path(cwd)
        self.workdir.mkdir(parents=True, exist_ok=True)
        workdir = self.workdir
        self.io_dir = Path(tempfile.mkdtemp(prefix="fk-io-"))  # the child's reports, out of its reach by name
        self.stderr_path = self.io_dir / "stderr.txt"
        cmd = [sys.executable, "-c", "from fastkernels.sandbox import _child_main; _child_main()",
               str(self.io_dir), ",".join(preload), str(os.getpid())]
        with open(self.stderr_path, "wb") as err, open(self.io_dir / "stdout.txt", "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=str(workdir), env=environ, stdin=subprocess.PIPE,
                                         stdout=out, stderr=err, start_new_session=True)

    def start(self, target: str) -> bool:
        """Hand the job (its payload already in io_dir) to the child; False if it is gone."""
        try:
            self.proc.stdin.write(f"{target}\n".encode())
            self.proc.stdin.close()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def discard(self) -> None:
        _kill_group(self.proc)
        shutil.rmtree(self.io_dir, ignore_errors=True)
        if self.own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


_warm: dict[tuple, _Child] = {}  # insertion order: the oldest first
_warm_kinds: set[tuple] = set()  # (environment, preloads) of the jobs that start warm (`prewarm`)
_warm_lock = threading.Lock()
MAX_WARM = 4  # waiting children kept at most (one per GPU and kind of job is what a run uses)


def shutdown_warm() -> None:
    """End every child waiting for a job (they also end by themselves when this process does)."""
    with _warm_lock:
        children = list(_warm.values())
        _warm.clear()
        _warm_kinds.clear()
    for child in children:
        child.discard()


atexit.register(shutdown_warm)


def _environ_for(env: dict | None, interpret: bool | None, memory_limit_mb: int | None) -> dict:
    environ = child_env(env)
    if interpret is None:
        interpret = not cuda_present()
    if interpret:
        environ["TRITON_INTERPRET"] = "1"
    else:
        environ.pop("TRITON_INTERPRET", None)
    if memory_limit_mb:
        environ["FASTKERNELS_JOB_MEMORY_MB"] = str(int(memory_limit_mb))
    environ["FASTKERNELS_JOB_FILE_MB"] = str(int(FILE_LIMIT_MB))
    return environ


def _key(environ: dict, preload: tuple[str, ...]) -> tuple:
    return tuple(sorted(environ.items())), tuple(preload)


def prewarm(preload: tuple[str, ...], *, env: dict | None = None, interpret: bool | None = None,
            memory_limit_mb: int | None = None) -> None:
    """Turn on warm starts for jobs run with this environment and `warm=preload`: a child that has
    imported `preload` waits for the first of them now, and each such job starts the next one's
    child (module docstring). For a caller about to run a series of jobs (the agent's gates)."""
    environ = _environ_for(env, interpret, memory_limit_mb)
    key = _key(environ, tuple(preload))
    with _warm_lock:
        _warm_kinds.add(key)
        _refill(key, environ, tuple(preload))


def _refill(key: tuple, environ: dict, preload: tuple[str, ...]) -> None:
    """(Under _warm_lock) a child waiting for the next job of this kind; the oldest waiting children
    over MAX_WARM are ended (their kinds' warm starts with them)."""
    child = _warm.get(key)
    if child is None or child.proc.poll() is not None:
        _warm[key] = _Child(environ, preload=preload)
    for k in [k for k in _warm if k != key][: max(0, len(_warm) - MAX_WARM)]:
        _warm_kinds.discard(k)
        _warm.pop(k).discard()


def _take_child(environ: dict, cwd: str | None, warm: tuple[str, ...]) -> _Child:
    """A child for one job: the one waiting for a job of this kind if warm starts are on for it
    (`prewarm`), starting the next one's imports now; else a fresh one."""
    key = _key(environ, warm)
    if cwd is not None or not warm or key not in _warm_kinds:
        return _Child(environ, cwd)
    with _warm_lock:
        child = _warm.pop(key, None)
        if child is None or child.proc.poll() is not None:  # none yet, or it died waiting
            if child is not None:
                child.discard()
            child = _Child(environ, preload=warm)
        _refill(key, environ, warm)
    return child


def job_name(fn: Callable | str) -> str:
    """"package.module:function" of a module-level function (what the child imports by name)."""
    if isinstance(fn, str):
        name = fn
    else:
        name = f"{fn.__module__}:{fn.__qualname__}"
        if "<" in name or "." in fn.__qualname__:
            raise ValueError(f"a job must be a module-level function, not {name}")
    if ":" not in name:
        raise ValueError(f"target must be 'package.module:function', got {name!r}")
    return name


def run_job(target: Callable | str, payload: dict, *, timeout: float, label: str, cwd: str | None = None,
            env: dict | None = None, interpret: bool | None = None,
            memory_limit_mb: int | None = None, warm: tuple[str, ...] = (),
            cancel: threading.Event | None = None) -> JobResult:
    """Run `target` (a module-level function, or its "package.module:function" name) on `payload`
    in a spawned child; never raises for anything the child does. The result's error and stderr
    are scrubbed of secrets (rules.secrets): a child that read one (from a file, from another
    process) and raised it does not get it into a prompt, a report or a log.

    cwd: the child's working directory (default: a fresh temporary one, removed afterwards).
    env: the environment to start from (default os.environ); credentials are removed either way.
    interpret: force (True) or forbid (False) the Triton interpreter; default: on when this machine
        has no CUDA GPU.
    memory_limit_mb: an address-space limit for the child (CPU jobs only: CUDA reserves far more
        virtual memory than it uses, so leave it None on a GPU).
    warm: modules the job imports first (e.g. ("torch", "fastkernels.measure.unit")): where `prewarm`
        turned warm starts on for this kind of job, run in a child started beforehand with them
        imported, and start the next such child now (module docstring). Ignored with `cwd`.
    cancel: an event another thread may set to end the job now (its process group is killed).
    """
    from fastkernels.rules.secrets import scrub

    result = _run_job(target, payload, timeout=timeout, label=label, cwd=cwd, env=env, interpret=interpret,
                      memory_limit_mb=memory_limit_mb, warm=warm, cancel=cancel)
    result.error = scrub(result.error) if result.error else result.error
    result.stderr_tail = scrub(result.stderr_tail) if result.stderr_tail else result.stderr_tail
    return result


def _run_job(target: Callable | str, payload: dict, *, timeout: float, label: str, cwd: str | None,
             env: dict | None, interpret: bool | None, memory_limit_mb: int | None, warm: tuple[str, ...],
             cancel: threading.Event | None) -> JobResult:
    target = job_name(target)
    environ = _environ_for(env, interpret, memory_limit_mb)
    child = _take_child(environ, cwd, tuple(warm))
    proc, io_dir, stderr_path = child.proc, child.io_dir, child.stderr_path
    try:
        (io_dir / _PAYLOAD).write_text(json.dumps(payload))
        start = time.monotonic()
        timed_out = cancelled = False
        if child.start(target):
            deadline = start + timeout
            while True:
                try:
                    proc.wait(timeout=0.1 if cancel is not None else max(0.0, deadline - time.monotonic()))
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        cancelled = True
                        break
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
        if timed_out:  # where it hangs: the child's faulthandler dumps its threads' stacks on SIGUSR1
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(HANG_DUMP_WAIT_S)
        # Grandchildren (compilers, worker pools) die with the job, whatever it returned.
        _kill_group(proc)
        seconds = time.monotonic() - start
        stderr_tail = _tail(stderr_path)
        if cancelled:
            return JobResult(False, "cancelled", error=f"{label}: cancelled (killed)", stderr_tail=stderr_tail,
                             seconds=seconds, label=label)
        if timed_out:
            site = hang_site(_tail(stderr_path, HANG_DUMP_TAIL))
            return JobResult(False, "timeout", error=f"{label}: timed out after {timeout:g} s (killed; "
                             "an endless loop, a deadlock or a kernel that never finishes)"
                             + (f"; it was at {site}" if site else ""),
                             stderr_tail=stderr_tail, seconds=seconds, label=label)
        result_path = io_dir / _RESULT
        report = None
        if result_path.is_file():
            try:
                report = json.loads(result_path.read_text())
            except (OSError, ValueError):
                report = None
            if not isinstance(report, dict):  # not what _child_main writes: a job that wrote its own
                report = None
        if report is not None:  # what it said counts, even if it crashed on the way out
            if report.get("ok"):
                return JobResult(True, "ok", value=report.get("value"), stderr_tail=stderr_tail,
                                 seconds=seconds, label=label)
            exc_line = report.get("error", "unknown error")
            kind = report.get("kind") or _classify_text(exc_line) or "exception"
            what = {"oom": "ran out of memory", "cuda_error": "hit a CUDA error"}.get(kind, "raised")
            return JobResult(False, kind, error=f"{label}: {what}: {exc_line}",
                             stderr_tail=stderr_tail, seconds=seconds, label=label)
        rc = proc.returncode
        last = _last_line(stderr_tail)
        hint = f"; last stderr line: {last}" if last else ""
        kind = _classify_text(stderr_tail) or "crash"
        if rc is not None and rc < 0:
            how = f"was killed by {_signal_name(-rc)}"
            if -rc == signal.SIGKILL and kind == "crash":
                kind = "oom"
                how += " (not by us: most likely the system's out-of-memory killer)"
        else:
            how = f"exited with status {rc} without reporting a result (os._exit or sys.exit in the code?)"
        if kind == "cuda_error":
            how += " after a CUDA error"
        return JobResult(False, kind, error=f"{label}: {how}{hint}", stderr_tail=stderr_tail,
                         seconds=seconds, label=label)
    finally:
        child.discard()


# ---- the child side ------------------------------------------------------------------------

def probe(payload: dict) -> dict:
    """A job that does nothing but report what the child sees (to measure the cost of a start:
    `{"torch": True}` adds importing torch)."""
    out = {"cwd": os.getcwd(), "interpret": os.environ.get("TRITON_INTERPRET"), "python": sys.version.split()[0],
           "pid": os.getpid(), "torch_preloaded": "torch" in sys.modules,
           "secrets": sorted(k for k in os.environ if "API_KEY" in k.upper())}
    if payload.get("exit"):
        os._exit(int(payload["exit"]))
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if payload.get("torch"):
        import torch

        out.update(torch=torch.__version__, cuda=torch.cuda.is_available())
    return out


def _preload(modules: list[str]) -> None:
    """Import what the job will import (ours and the frameworks', never the job's code), and open
    the CUDA context if the job will have a GPU. A module that fails to import here is left for the
    job to import and report."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the job's own import says what is wrong
            return
    torch = sys.modules.get("torch")
    if torch is not None and not os.environ.get("TRITON_INTERPRET"):
        try:
            if torch.cuda.is_available():
                torch.cuda.init()
        except Exception:  # noqa: BLE001 - the job meets the same error and reports it
            pass


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` (Linux /proc), None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _die_with_parent(io_dir: Path, parent: int) -> None:
    """Fork a watchdog that kills this job's whole process group (the job and everything it started)
    once the process that started the job is gone, whatever ended it (SIGKILL included), then
    removes the job's folders the parent would have removed: a job never outlives fastkernels.
    Forked first thing, while only the standard library is loaded, so forking is safe; a separate
    process (in a process group of its own), so a job holding the GIL cannot stall it."""
    if not hasattr(os, "fork"):
        return
    job = os.getpid()
    workdir = Path.cwd()
    if os.fork():
        return  # the job goes on
    try:
        os.setpgid(0, 0)  # out of the job's group: the kill below must not end the watchdog first
        while True:
            time.sleep(WATCHDOG_PERIOD_S)
            if os.getppid() != job:  # the job itself is over: nothing left to guard
                os._exit(0)
            now = _parent_of(job)
            if now is None:  # no /proc: is the parent still there?
                try:
                    os.kill(parent, 0)
                    continue
                except ProcessLookupError:
                    now = -1
            if now != parent:
                with contextlib.suppress(OSError):
                    os.killpg(job, signal.SIGKILL)  # the job leads its group (start_new_session)
                time.sleep(0.2)
                shutil.rmtree(io_dir, ignore_errors=True)
                if workdir.name.startswith("fk-job-"):  # the folder run_job made for it, not a caller's
                    shutil.rmtree(workdir, ignore_errors=True)
                os._exit(0)
    finally:
        os._exit(0)


def _child_main() -> None:
    io_dir, preload = Path(sys.argv[1]), [m for m in sys.argv[2].split(",") if m]
    # The parent's pid from its command line: a parent that died while this child started is seen.
    _die_with_parent(io_dir, int(sys.argv[3]))
    limit = os.environ.pop("FASTKERNELS_JOB_MEMORY_MB", None)
    if limit:
        import resource

        nbytes = int(limit) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    import resource

    # No core files; no file (its stderr included) past the parent's FILE_LIMIT_MB: a write past it
    # fails (EFBIG; Python ignores SIGXFSZ).
    file_mb = int(os.environ.pop("FASTKERNELS_JOB_FILE_MB", FILE_LIMIT_MB))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    # A crash inside native code still leaves the Python stack in stderr; SIGUSR1 (sent by run_job
    # when the job runs out of time) dumps every thread's stack there before the kill.
    import faulthandler

    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _preload(preload)
    target = sys.stdin.readline().strip()  # the job: written when it is handed out; EOF: none comes
    if not target:
        os._exit(0)
    payload = json.loads((io_dir / _PAYLOAD).read_text())
    result_path = io_dir / _RESULT

    def report(data: dict) -> None:
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, result_path)

    try:
        module_name, func_name = target.split(":", 1)
        func = getattr(importlib.import_module(module_name), func_name)
        value = func(payload)
        try:
            encoded = json.loads(json.dumps(value))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"job result is not JSON-serialisable: {exc}") from None
        report({"ok": True, "value": encoded})
    except BaseException as exc:  # noqa: BLE001 - everything the job does is reported, nothing escapes
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}".strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        kind = "oom" if isinstance(exc, MemoryError) or "OutOfMemoryError" in type(exc).__name__ else None
        report({"ok": False, "error": first[:500], "kind": kind or _classify_text(text)})
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the result is written, and a job that broke CUDA or left threads
    # behind can hang or crash on the way out.
    os._exit(0)
