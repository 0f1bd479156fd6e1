"""The sandbox: every way a job can end becomes a JobResult, and the parent goes on."""

import os
import signal
import time
from pathlib import Path

import pytest

from fastkernels.rules.secrets import scrubbed_environ
from fastkernels.sandbox import run_job

FAULTS = "tests.engine.cheats.faults"


def job(name, payload=None, **kw):
    kw.setdefault("timeout", 30)
    return run_job(f"{FAULTS}:{name}", payload or {}, label=f"job {name}", **kw)


def test_ok_job_returns_value_in_its_own_dir_and_session(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("HF_TOKEN", "hf-test")
    monkeypatch.setenv("MY_SECRET_THING", "x")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # no secret-shaped name: only the allow-list keeps them out
    monkeypatch.setenv("DATABASE_URL", "postgres://app:hunter2@db/prod")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example/T000/B000/XXXX")
    monkeypatch.setenv("GH_PAT", "ghp_abcdefghijklmnopqrstuvwxyz0123456789")
    monkeypatch.setenv("HF_HOME", "/tmp/hf-home")
    r = job("echo", {"a": [1, 2]})
    assert r.ok and r.kind == "ok", r.error
    assert r.value["payload"] == {"a": [1, 2]}
    assert r.value["cwd"] != os.getcwd() and "fk-job-" in r.value["cwd"]
    assert not os.path.exists(r.value["cwd"])  # its temporary directory is gone
    assert r.value["pgid_is_own"]  # its own process group: a timeout can kill everything it started
    env = set(r.value["env"])
    assert not {"ANTHROPIC_API_KEY", "HF_TOKEN", "MY_SECRET_THING", "DATABASE_URL", "SLACK_WEBHOOK_URL",
                "GH_PAT"} & env
    assert {"TOKENIZERS_PARALLELISM", "PATH", "HF_HOME", "PYTHONPATH"} <= env
    assert r.value["interpret"] == "1"  # no GPU here: the Triton interpreter, set before any import


def test_scrub_env_patterns():
    kept = scrubbed_environ({"OPENAI_API_KEY": "1", "GITHUB_TOKEN": "2", "aws_secret_access_key": "3",
                             "DB_PASSWD": "4", "AWS_ACCESS_KEY_ID": "5", "SSH_PRIVATE_KEY": "6", "HTTP_AUTH": "7",
                             "HOME": "/h", "TOKENIZERS_PARALLELISM": "false", "GIT_AUTHOR_NAME": "a"})
    assert kept == {"HOME": "/h", "TOKENIZERS_PARALLELISM": "false", "GIT_AUTHOR_NAME": "a"}


def test_given_cwd_is_used_and_kept(tmp_path):
    r = job("write_file", cwd=str(tmp_path))
    assert r.ok and r.value == str(tmp_path)
    assert (tmp_path / "scratch.txt").read_text() == "x"


def test_exception_is_attributed():
    r = job("raise_error")
    assert not r.ok and r.kind == "exception"
    assert r.error == "job raise_error: raised: ValueError: bad shape for kernel"
    assert "Traceback" in r.stderr_tail and "raise_error" in r.stderr_tail


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    r = job("hang_with_grandchild", {"pidfile": str(pidfile)}, timeout=3)
    assert r.kind == "timeout" and not r.ok
    assert "timed out after 3 s" in r.error and r.error.startswith("job hang_with_grandchild:")
    assert time.monotonic() - t0 < 60  # a generous bound for a busy machine; the job would hang forever
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # the grandchild was SIGKILLed with the group; wait until it is reaped
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the job's grandchild outlived the timeout")


def test_a_timed_out_job_says_where_it_hung():
    r = job("hang_deep", timeout=3)
    assert r.kind == "timeout"
    # the innermost frames of its main thread, from the faulthandler dump taken before the kill
    assert "; it was at faults.py:" in r.error and "in _spin_in_the_kernel, called from faults.py:" in r.error
    assert "in hang_deep" in r.error, r.error


def test_hang_site_reads_the_main_thread_and_puts_the_candidate_first():
    from fastkernels.sandbox import hang_site

    dump = """noise before
Thread 0x00007f0000000002 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait

Current thread 0x00007f0000000001 (most recent call first):
  File "/x/site-packages/torch/cuda/__init__.py", line 1040 in synchronize
  File "/tmp/fk-job-1/candidate.py", line 42 in forward
  File "/x/fastkernels/measure/runner.py", line 480 in _call
  File "/x/fastkernels/measure/runner.py", line 600 in _run_case
"""
    assert hang_site(dump) == ("candidate.py:42 in forward, called from __init__.py:1040 in synchronize, "
                               "called from runner.py:480 in _call")
    assert hang_site("no dump here") == ""


def test_a_secret_in_a_jobs_error_is_scrubbed():
    key = "sk-ant-" + "a1B2c3D4e5F6g7H8i9J0"
    r = job("raise_a_secret", {"key": key, "token": "Zq9vX2mN8bL4kJ7hG5fD"})
    assert r.kind == "exception"
    assert key not in r.error and "Zq9vX2mN8bL4kJ7hG5fD" not in r.error and "[REDACTED]" in r.error
    assert key not in r.stderr_tail and "Zq9vX2mN8bL4kJ7hG5fD" not in r.stderr_tail  # the traceback too


def test_a_job_cannot_write_a_file_past_the_limit(monkeypatch):
    monkeypatch.setattr("fastkernels.sandbox.FILE_LIMIT_MB", 4)
    assert job("write_big_file", {"mb": 3}).ok
    r = job("write_big_file", {"mb": 5})
    assert r.kind == "exception" and "File too large" in r.error, r.error


@pytest.mark.parametrize("name,signame", [("segfault", "SIGSEGV"), ("abort", "SIGABRT")])
def test_hard_crash_becomes_a_result(name, signame):
    r = job(name)
    assert not r.ok and r.kind == "crash"
    assert r.error.startswith(f"job {name}: was killed by {signame}")
    if name == "segfault":  # faulthandler leaves the Python stack of the crash in stderr
        assert "Fatal Python error" in r.stderr_tail and "segfault" in r.stderr_tail


def test_os_exit_without_result():
    r = job("exit_quietly")
    assert r.kind == "crash" and "exited with status 3 without reporting a result" in r.error


def test_out_of_memory_is_reported_as_oom():
    r = job("exhaust_memory", memory_limit_mb=1024)
    assert not r.ok and r.kind == "oom", r.error
    assert "MemoryError" in r.error


def test_unserialisable_result_is_an_exception():
    r = job("unserialisable")
    assert r.kind == "exception" and "not JSON-serialisable" in r.error


def test_a_job_is_a_module_level_function():
    from fastkernels import sandbox

    assert sandbox.job_name(sandbox.probe) == "fastkernels.sandbox:probe"
    assert sandbox.job_name("tests.engine.cheats.faults:echo") == "tests.engine.cheats.faults:echo"
    for bad in (lambda p: p, test_a_job_is_a_module_level_function.__code__, "no_colon"):
        with pytest.raises((ValueError, AttributeError)):
            sandbox.job_name(bad)

    def nested(payload):
        return payload

    with pytest.raises(ValueError, match="module-level"):
        sandbox.job_name(nested)


def test_child_start_is_cheap():
    # A job that imports nothing heavy pays one interpreter start: 0.07 s measured on this 2-core
    # box; importing torch alone takes 1.5-3 s here, so 1.5 s means nothing heavy loads eagerly.
    best = min(run_job("fastkernels.sandbox:probe", {}, timeout=30, label="probe").seconds for _ in range(3))
    assert best < 1.5


@pytest.mark.gpu
def test_cuda_out_of_bounds_is_a_cuda_error():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: an illegal memory access only exists on one")
    r = job("illegal_memory_access", timeout=120)
    assert not r.ok and r.kind == "cuda_error", (r.kind, r.error)
    assert r.error.startswith("job illegal_memory_access:")


def test_warm_child_is_started_ahead_with_its_imports_and_runs_one_job_only(monkeypatch):
    """With `warm`, the next job's child is started (and imports torch) while this job runs: the
    second job finds torch already imported and pays no interpreter start; every job still gets a
    process of its own, with credentials scrubbed; a failure in one leaves the next unharmed."""
    from fastkernels import sandbox

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("FASTKERNELS_WARM_TEST", "1")  # a kind of job of its own: no other test's child is reused
    probe = sandbox.probe  # a job is named by its function object
    try:
        # Without prewarm, `warm` starts nothing ahead (a one-off job must not pay for a spare child).
        run_job(probe, {}, timeout=120, label="one-off", warm=("torch",))
        assert not [k for k in sandbox._warm if ("FASTKERNELS_WARM_TEST", "1") in k[0]]
        sandbox.prewarm(("torch",))
        first = run_job(probe, {}, timeout=120, label="warm 1", warm=("torch",))
        assert first.ok, first.error
        time.sleep(0.2)
        waiting = [c for k, c in sandbox._warm.items() if ("FASTKERNELS_WARM_TEST", "1") in k[0]]
        assert len(waiting) == 1 and waiting[0].proc.poll() is None  # the next one, waiting
        deadline = time.monotonic() + 120
        second = None
        while time.monotonic() < deadline:  # once it has imported torch, a job starts at once
            second = run_job(probe, {}, timeout=120, label="warm 2", warm=("torch",))
            if second.value["torch_preloaded"]:
                break
        assert second.ok and second.value["torch_preloaded"], second
        assert second.value["pid"] != first.value["pid"] and second.value["cwd"] != first.value["cwd"]
        assert second.value["secrets"] == [] and second.value["interpret"] == "1"
        # The warm child is the one started for this kind: a job without `warm` never gets it.
        cold = run_job(probe, {}, timeout=60, label="cold")
        assert cold.ok and not cold.value["torch_preloaded"]
        # Failures are still each job's own.
        died = run_job(probe, {"exit": 3}, timeout=60, label="warm dies", warm=("torch",))
        assert not died.ok and died.kind == "crash" and "warm dies" in died.error
        slow = run_job(probe, {"sleep": 300}, timeout=2, label="warm sleeps", warm=("torch",))
        assert slow.kind == "timeout" and slow.seconds < 60  # killed long before its 300 s sleep ends
        after = run_job(probe, {}, timeout=120, label="warm after", warm=("torch",))
        assert after.ok and after.value["pid"] not in (first.value["pid"], second.value["pid"])
    finally:
        sandbox.shutdown_warm()
    assert not sandbox._warm


def test_a_running_job_and_its_descendants_die_with_the_process_that_started_it(tmp_path):
    """SIGKILL of the process that ran the job (no atexit, no handler) still ends the job and the
    process it started, within seconds: no orphan holds a CPU or a GPU."""
    import subprocess
    import sys

    import psutil

    pidfile = tmp_path / "grandchild"
    script = tmp_path / "parent.py"
    script.write_text(
        "import threading, time\n"
        "from fastkernels.sandbox import run_job\n"
        f"threading.Thread(target=run_job, args=('{FAULTS}:hang_with_grandchild', {{'pidfile': {str(pidfile)!r}}}),\n"
        "                 kwargs={'timeout': 600, 'label': 'hang'}, daemon=True).start()\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None, "the job never started"
            time.sleep(0.1)
        grandchild = int(pidfile.read_text())
        family = [p for p in psutil.Process(parent.pid).children(recursive=True)]
        assert grandchild in {p.pid for p in family}
        job = next(p for p in family if "_child_main" in " ".join(p.cmdline()))
        folders = [Path(job.cmdline()[-3]), Path(job.cwd())]  # its io folder and its working folder
        assert folders[0].name.startswith("fk-io-") and folders[1].name.startswith("fk-job-")
    finally:
        parent.kill()
        parent.wait()
    gone, alive = psutil.wait_procs(family, timeout=15)
    for p in alive:  # leave no orphan behind on a failure either
        p.kill()
    assert not alive, f"outlived the parent: {[(p.pid, p.cmdline()[:3]) for p in alive]}"
    deadline = time.monotonic() + 10  # and the folders the parent would have removed go too
    while any(f.exists() for f in folders) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(f.exists() for f in folders), folders


def test_waiting_child_ends_with_its_parent(tmp_path):
    """A child waiting for a job that never comes exits when the process that started it dies."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from fastkernels import sandbox\n"
        "sandbox.prewarm(('json',))\n"
        "print([c.proc.pid for c in sandbox._warm.values()][0], flush=True)\n"
        "os._exit(0)\n"  # no atexit: the waiting child must notice by itself
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the waiting child outlived its parent")


def test_a_result_file_the_job_wrote_itself_is_not_trusted():
    r = job("forge_result_list")
    assert not r.ok and r.kind == "crash" and "without reporting a result" in r.error


def test_cancel_ends_a_job_at_once():
    import threading

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    r = job("hang", timeout=120, cancel=stop)
    assert not r.ok and r.kind == "cancelled" and "cancelled" in r.error
    assert time.monotonic() - t0 < 60  # far below the 120 s limit it would otherwise have run to


def test_a_jobs_environment_is_allow_listed():
    from fastkernels.rules.secrets import sandbox_environ

    env = {"PATH": "/usr/bin", "HOME": "/h", "LC_ALL": "C", "CUDA_VISIBLE_DEVICES": "0", "TRITON_CACHE_DIR": "/t",
           "TORCHINDUCTOR_CACHE_DIR": "/i", "HF_HOME": "/hf", "CPATH": "/inc", "MASTER_PORT": "29500",
           "HF_TOKEN": "hf_x", "TRITON_API_KEY": "k", "DATABASE_URL": "postgres://u:p@h/db", "GH_PAT": "ghp_x",
           "SLACK_WEBHOOK_URL": "https://hooks", "EDITOR": "vim", "SSH_AUTH_SOCK": "/s"}
    assert set(sandbox_environ(env)) == {"PATH", "HOME", "LC_ALL", "CUDA_VISIBLE_DEVICES", "TRITON_CACHE_DIR",
                                         "TORCHINDUCTOR_CACHE_DIR", "HF_HOME", "CPATH", "MASTER_PORT"}
