"""The sandbox: every way a job can end becomes a JobResult, and the parent goes on."""

import os
import signal
import time

import pytest

from fastkernels.bench.sandbox import run_job, scrub_env

FAULTS = "tests.engine.cheats.faults"


def job(name, payload=None, **kw):
    kw.setdefault("timeout", 30)
    return run_job(f"{FAULTS}:{name}", payload or {}, label=f"job {name}", **kw)


def test_ok_job_returns_value_in_its_own_dir_and_session(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("HF_TOKEN", "hf-test")
    monkeypatch.setenv("MY_SECRET_THING", "x")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    r = job("echo", {"a": [1, 2]})
    assert r.ok and r.kind == "ok", r.error
    assert r.value["payload"] == {"a": [1, 2]}
    assert r.value["cwd"] != os.getcwd() and "fk-job-" in r.value["cwd"]
    assert not os.path.exists(r.value["cwd"])  # its temporary directory is gone
    assert r.value["pgid_is_own"]  # its own process group: a timeout can kill everything it started
    env = set(r.value["env"])
    assert not {"ANTHROPIC_API_KEY", "HF_TOKEN", "MY_SECRET_THING"} & env
    assert "TOKENIZERS_PARALLELISM" in env and "PATH" in env
    assert r.value["interpret"] == "1"  # no GPU here: the Triton interpreter, set before any import


def test_scrub_env_patterns():
    kept = scrub_env({"OPENAI_API_KEY": "1", "GITHUB_TOKEN": "2", "aws_secret_access_key": "3",
                      "HOME": "/h", "TOKENIZERS_PARALLELISM": "false"})
    assert kept == {"HOME": "/h", "TOKENIZERS_PARALLELISM": "false"}


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
    assert time.monotonic() - t0 < 20
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


def test_child_start_is_cheap():
    # A job that imports nothing heavy pays one interpreter start: 0.07 s measured on this 2-core
    # box; importing torch alone takes 1.5-3 s here, so 1.5 s means nothing heavy loads eagerly.
    best = min(run_job("fastkernels.bench.sandbox:probe", {}, timeout=30, label="probe").seconds for _ in range(3))
    assert best < 1.5


@pytest.mark.gpu
def test_cuda_out_of_bounds_is_a_cuda_error():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: an illegal memory access only exists on one")
    r = job("illegal_memory_access", timeout=120)
    assert not r.ok and r.kind == "cuda_error", (r.kind, r.error)
    assert r.error.startswith("job illegal_memory_access:")
