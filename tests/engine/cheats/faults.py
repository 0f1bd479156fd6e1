"""Jobs that misbehave in every way a child process can, for the sandbox's fault corpus."""

import os
import sys
import time


def echo(payload):
    return {"payload": payload, "cwd": os.getcwd(), "pgid_is_own": os.getpgid(0) == os.getpid(),
            "env": sorted(os.environ), "interpret": os.environ.get("TRITON_INTERPRET")}


def write_file(payload):
    with open("scratch.txt", "w") as fh:
        fh.write("x")
    return os.getcwd()


def raise_error(payload):
    raise ValueError("bad shape for kernel")


def hang(payload):
    while True:
        time.sleep(0.01)


def hang_with_grandchild(payload):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    with open(payload["pidfile"], "w") as fh:
        fh.write(str(child.pid))
    while True:
        time.sleep(0.01)


def segfault(payload):
    import ctypes

    ctypes.string_at(0)


def abort(payload):
    os.abort()


def exit_quietly(payload):
    os._exit(3)


def exhaust_memory(payload):
    blocks = []
    while True:
        blocks.append(bytearray(64 << 20))


def unserialisable(payload):
    return {"fn": echo}


def illegal_memory_access(payload):
    """A Triton kernel that stores far outside its buffer: on a GPU, an illegal memory access that
    poisons the CUDA context (GPU only)."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _oob_store(ptr):
        tl.store(ptr + (1 << 36), 1.0)

    buf = torch.empty(16, device="cuda")
    _oob_store[(1,)](buf)
    torch.cuda.synchronize()
    return "unreachable"


def forge_result_list(payload):
    """Writes a result file that is not what the harness writes (a list), and exits."""
    with open(os.path.join(sys.argv[1], "result.json"), "w") as fh:
        fh.write("[0]")
    os._exit(0)


def _spin_in_the_kernel():
    while True:
        time.sleep(0.01)


def hang_deep(payload):
    return _spin_in_the_kernel()


def raise_a_secret(payload):
    """A job that read a credential (another process's environment, a file) and raises it."""
    raise RuntimeError(f"launch failed; by the way the key is {payload['key']} and token={payload['token']}")


def write_big_file(payload):
    with open("big.bin", "wb") as fh:
        for _ in range(payload["mb"]):
            fh.write(b"\0" * (1 << 20))
    return "written"
