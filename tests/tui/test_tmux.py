"""The cockpit in a real terminal: `fastkernels tui --tiny --llm-model library` inside tmux, on the
real engine (Agent, library backend, sandboxed validation and unit test). Drive it with keys, read
the screen, quit, and check the exit status and the kernel on disk.

Needs the `tmux` binary (CI: `apt-get install -y tmux`); without it this test fails and says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WIDTH, HEIGHT = 150, 42


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "fk")

    def wait_for(self, *texts: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < end:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {texts!r}; screen:\n{screen}")

    def wait_gone(self, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while text in self.screen():
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} still on screen after {timeout:.0f}s:\n{self.screen()}")
            time.sleep(0.1)


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: the real-terminal test needs it (apt-get install -y tmux)")
    t = Tmux(f"fk-test-{uuid.uuid4().hex[:8]}")  # a server of our own: never touches the user's
    yield t
    subprocess.run(["tmux", "-L", t.socket, "kill-server"], capture_output=True)


def test_cockpit_in_tmux_on_the_real_engine(tmux, tmp_path):
    exe = Path(sys.executable).parent / "fastkernels"
    out = tmp_path / "candidate"
    status = tmp_path / "exit_status"
    env = {
        "FASTKERNELS_CONFIG_DIR": str(tmp_path / "config"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TERM": "xterm-256color",
    }
    if os.environ.get("TRITON_INTERPRET"):  # set by tests/conftest.py where there is no GPU
        env["TRITON_INTERPRET"] = os.environ["TRITON_INTERPRET"]
    exports = " ".join(f"{k}={v!s}" for k, v in env.items())
    cmd = (f"cd {tmp_path} && env -u COLUMNS -u LINES {exports} {exe} tui --tiny --llm-model library --out-dir {out} "
           f"--theme fastkernels-green; echo $? > {status}; sleep 30")
    # size the window first, then start the app in it (a detached session starts at 80x24)
    tmux("-f", "/dev/null", "new-session", "-d", "-s", "fk", "-x", str(WIDTH), "-y", str(HEIGHT), "sleep 600")
    tmux("set-option", "-t", "fk", "window-size", "manual")
    tmux("resize-window", "-t", "fk", "-x", str(WIDTH), "-y", str(HEIGHT))
    tmux("respawn-pane", "-k", "-t", "fk", cmd)

    screen = tmux.wait_for("add_rms_norm", "silu_and_mul", "pending", "g generates", timeout=90)
    assert "Llama-3.1-8B-Instruct (tiny)" in screen and "backend library (verified" in screen
    assert len(screen.splitlines()[0]) > 100  # the app got the whole 150-column terminal
    # one operator through the real pipeline: library reply streamed, validated, unit-tested
    tmux("send-keys", "-t", "fk", "r")
    screen = tmux.wait_for("unit tests passed (attempt 1)", timeout=150)
    assert "── generated" in screen and "attempt 1 · backend library" in screen
    tmux.wait_for("add_rms_norm     review", timeout=10)
    kernel = out / "L1" / "add_rms_norm.py"
    assert kernel.is_file() and "class AddRMSNorm" in kernel.read_text()
    # the diff of that kernel against the baseline, then the help screen
    tmux("send-keys", "-t", "fk", "d")
    tmux.wait_for("baseline add_rms_norm", "candidate add_rms_norm (attempt 1)", timeout=10)
    tmux("send-keys", "-t", "fk", "?")
    tmux.wait_for("fastkernels cockpit", "Generate all", timeout=10)
    tmux("send-keys", "-t", "fk", "Escape")
    tmux.wait_gone("fastkernels cockpit", timeout=10)
    # quit: nothing is running, so it exits at once, with status 0
    tmux("send-keys", "-t", "fk", "q")
    end = time.monotonic() + 20
    while not (status.is_file() and status.read_text().strip()) and time.monotonic() < end:
        time.sleep(0.2)
    assert status.is_file() and status.read_text().strip() == "0", tmux.screen()
    assert kernel.is_file()  # quitting never loses a saved kernel
