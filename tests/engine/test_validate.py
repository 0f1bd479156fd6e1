"""validate_kernel: static checks without executing, then import/class/init in the sandbox."""

from pathlib import Path

import pytest

from fastkernels.agent.agent import validate_kernel
from fastkernels.registry.tasks import build_spec

CHEATS = Path(__file__).parent / "cheats"
GOOD = (CHEATS / "correct_rms_norm.py").read_text()


@pytest.fixture(scope="module")
def spec():
    return build_spec(1, "rms_norm", "meta-llama/Llama-3.1-8B-Instruct", tiny=True)


def test_good_kernel_passes(spec):
    r = validate_kernel(GOOD, "RMSNorm", spec=spec)
    assert r.ok and r.stage is None and r.error == "", r.error


def test_syntax_error_names_the_line_without_running(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()\nclass RMSNorm:\n    def forward(self x):\n        pass\n"
    r = validate_kernel(code, "RMSNorm")
    assert not r.ok and r.stage == "syntax" and r.line == 3
    assert "line 3" in r.error and "def forward(self x):" in r.error
    assert not marker.exists()


def test_missing_class_lists_the_classes_there(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()\nclass RmsNorm:\n    pass\nclass Helper:\n    pass\n"
    r = validate_kernel(code, "RMSNorm")
    assert not r.ok and r.stage == "class"
    assert "no top-level class named 'RMSNorm'" in r.error and "RmsNorm, Helper" in r.error
    assert not marker.exists()  # decided from the syntax tree: nothing was executed


def test_import_error_is_attributed_to_its_line(spec):
    code = "import torch\nimport triton_not_installed_anywhere\n" + GOOD
    r = validate_kernel(code, "RMSNorm", spec=spec)
    assert not r.ok and r.stage == "import" and r.kind == "exception" and r.line == 2
    assert "ModuleNotFoundError" in r.error and "triton_not_installed_anywhere" in r.error
    assert r.error.startswith("L1/rms_norm candidate:")


def test_init_raising_names_the_init_args(spec):
    code = GOOD.replace("        self.variance_epsilon = eps\n",
                        "        self.variance_epsilon = eps\n        raise ValueError('hidden_size must be a power of 2')\n")
    r = validate_kernel(code, "RMSNorm", spec=spec)
    assert not r.ok and r.stage == "init"
    assert "ValueError: hidden_size must be a power of 2" in r.error
    assert "'hidden_size': 64" in r.error and r.line is not None


def test_not_a_module(spec):
    r = validate_kernel("class RMSNorm:\n    def forward(self, x):\n        return x\n", "RMSNorm", spec=spec)
    assert not r.ok and r.stage == "class" and "torch.nn.Module" in r.error


def test_hang_at_import_times_out():
    code = "while True:\n    pass\nclass RMSNorm:\n    def forward(self, x):\n        return x\n"
    r = validate_kernel(code, "RMSNorm", timeout=3)
    assert not r.ok and r.kind == "timeout" and r.stage == "import" and "timed out after 3 s" in r.error


def test_crash_at_import_is_a_result():
    code = "import faulthandler\nfaulthandler._sigsegv()\nclass RMSNorm:\n    def forward(self, x):\n        return x\n"
    r = validate_kernel(code, "RMSNorm")
    assert not r.ok and r.kind == "crash" and "SIGSEGV" in r.error and r.stage == "import"


def test_os_exit_in_init(spec):
    code = GOOD.replace("        self.variance_epsilon = eps\n", "        import os\n        os._exit(0)\n")
    r = validate_kernel(code, "RMSNorm", spec=spec)
    assert not r.ok and r.kind == "crash" and r.stage == "init" and "without reporting a result" in r.error


CUDA_OK = '''import torch
from torch import nn
from torch.utils.cpp_extension import load_inline

_ext = None


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        out = torch.empty_like(x)
        self._launch(x, out)
        return out

    def _launch(self, x, out):
        _ext.rms_norm(x, self.weight, out, self.variance_epsilon)
'''


@pytest.mark.parametrize("snippet,line,what", [
    ("        out = torch.rsqrt(x)\n", 16, "torch.rsqrt"),
    ("        out = x @ self.weight\n", 16, "`@`"),
    ("        out = x.float()\n", 16, ".float("),
    ("        out = torch.nn.functional.silu(x)\n", 16, "silu"),
])
def test_cuda_only_rejects_framework_compute_in_forward(snippet, line, what):
    code = CUDA_OK.replace("        out = torch.empty_like(x)\n", "        out = torch.empty_like(x)\n" + snippet)
    r = validate_kernel(code, "RMSNorm", cuda_only=True)
    assert not r.ok and r.stage == "static" and r.line == line, r.error
    assert f"line {line}" in r.error and what in r.error


def test_cuda_only_follows_helper_methods():
    code = CUDA_OK.replace("        _ext.rms_norm(", "        out.copy_(x.mean(-1, keepdim=True))\n        _ext.rms_norm(")
    r = validate_kernel(code, "RMSNorm", cuda_only=True)
    assert not r.ok and "in _launch()" in r.error


def test_cuda_only_rejects_triton_and_accepts_plain_cuda():
    r = validate_kernel(GOOD, "RMSNorm", cuda_only=True)
    assert not r.ok and r.stage == "static" and "imports triton" in r.error and r.line == 5
    from fastkernels.judge.validate import static_check

    assert static_check(CUDA_OK, "RMSNorm", cuda_only=True) is None


def test_baseline_import_is_rejected_in_any_mode():
    code = "from fastkernels.registry.tasks import load_task\n" + GOOD
    r = validate_kernel(code, "RMSNorm")
    assert not r.ok and r.stage == "static" and r.line == 1 and "baseline" in r.error


@pytest.mark.parametrize("snippet, what", [
    ("import sys\nsys.modules['fastkernels.measure.unit']._compare = print\n", "`sys.modules` reaches every loaded module"),
    ("from sys import modules\n", "importing 'sys.modules'"),
    ("import sys\nF = sys._getframe\n", "`sys._getframe` reaches the callers' frames"),
    ("import inspect\n", "importing 'inspect' reaches call-stack and frame inspection"),
    ("import gc\n", "importing 'gc'"),
    ("import importlib\n", "importing 'importlib'"),
    ("import builtins\n", "importing 'builtins'"),
    ("def f(e):\n    return e.__traceback__.tb_frame.f_back\n", "`.f_back` reaches the caller's frame"),
    ("X = __import__('fastkernels')\n", "`__import__` reaches the import system"),
    ("X = object.__subclasses__()\n", "`.__subclasses__` reaches every class"),
    ("torch.cuda.synchronize = lambda: None\n", "assigning `torch.cuda.synchronize`"),
    ("from triton.runtime.jit import JITFunction\nJITFunction.run = None\n", "assigning `JITFunction.run`"),
    ("setattr(torch, 'rsqrt', None)\n", "`setattr(torch, ...)`"),
    ("del torch.nn.functional.silu\n", "assigning `torch.nn.functional.silu`"),
    ("exec('import gc')\n", "`exec(...)` reaches code no one can read"),
])
def test_reaching_the_process_around_the_kernel_is_rejected_statically(snippet, what):
    from fastkernels.judge.validate import static_check

    r = static_check(GOOD + "\n" + snippet, "RMSNorm")
    assert r is not None and r.stage == "static" and what in r.error, r and r.error
    first = GOOD.count("\n") + 2  # the snippet's first line
    assert first <= r.line < first + snippet.count("\n"), r.error  # a line of the snippet


def test_a_kernel_keeping_its_own_state_is_not_reaching_out():
    from fastkernels.judge.validate import static_check

    code = GOOD.replace("        self.variance_epsilon = eps\n",
                        "        self.variance_epsilon = eps\n        setattr(self, 'cache', None)\n"
                        "        self.cache = {}\n")
    assert static_check(code, "RMSNorm") is None
