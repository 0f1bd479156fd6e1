"""`fastkernels list`: the operator table of a model at a level, and one-line errors (no traceback)
for a model or level the user got wrong."""

import os
import subprocess
import sys

import pytest

from fastkernels import cli
from fastkernels.models.catalog import known_models


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps table cells to the terminal width


def test_list_llama_level_1(capsys, wide):
    assert cli.main(["list", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--level", "1"]) == 0
    out = capsys.readouterr().out
    assert "meta-llama/Llama-3.1-8B-Instruct · level 1" in out
    for op, cls in [("rms_norm", "RMSNorm"), ("add_rms_norm", "AddRMSNorm"), ("rotary_embedding", "RotaryEmbedding"),
                    ("silu_and_mul", "SiluAndMul"), ("attention", "Attention"), ("embedding", "Embedding")]:
        assert f" {op} " in out and f" {cls} " in out, op
    assert " moe_router " not in out  # Llama is dense
    # full-size shapes of the default workload: 4096-token prefill, one token over 4096 cached
    assert "tokens=4096" in out and "past=4096" in out


def test_list_mixtral_level_2_includes_the_moe_block(capsys, wide):
    assert cli.main(["list", "--model", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--level", "2"]) == 0
    out = capsys.readouterr().out
    assert "level 2" in out and " moe_block " in out and " attention_block " in out
    assert " mlp_block " not in out  # Mixtral's MLP is the MoE block


def test_list_tiny_uses_small_shapes(capsys, wide):
    assert cli.main(["list", "--model", "Qwen/Qwen3-30B-A3B", "--level", "1", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert "(tiny)" in out and " moe_router " in out and "tokens=4096" not in out


def _run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "fastkernels.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_unknown_model_exits_nonzero_with_one_line_and_the_known_models():
    proc = _run_cli("list", "--model", "nope/nope", "--level", "1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope/nope" in lines[0], proc.stderr
    for model_id in known_models():
        assert model_id in lines[0]


@pytest.mark.parametrize("level", ["5", "zero"])
def test_bad_level_exits_nonzero_with_one_line(capsys, level):
    assert cli.main(["list", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--level", level]) != 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad level" in lines[0] and "1 (kernels)" in lines[0], captured.err


def test_a_binary_kernel_file_and_an_out_that_is_a_file_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTKERNELS_TRACKING", "0")
    blob = tmp_path / "kernel.py"
    blob.write_bytes(bytes(range(128, 256)) * 4)
    assert cli.main(["check", str(blob), "--level", "1", "--tiny"]) != 0
    err = capsys.readouterr().err.strip()
    assert err == f"error: {blob} is not a text file (not UTF-8): pass the kernel's Python source", err
    taken = tmp_path / "taken"
    taken.write_text("x")
    for out, says in ((taken, f"--out {taken} is a file, not a folder"),
                      (taken / "sub", f"--out {taken / 'sub'}: {taken} is a file, so the folder cannot be made")):
        assert cli.main(["agent", "--tiny", "--level", "1", "--llm-model", "library", "--out", str(out)]) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {says}") and "\n" not in err, err


def test_error_text_with_rich_markup_is_printed_as_it_is(tmp_path, capsys, monkeypatch):
    # a kernel's own error text reaches the console: "[/]" in it once crashed the printer
    monkeypatch.setenv("FASTKERNELS_TRACKING", "0")
    kernel = tmp_path / "kernel.py"
    kernel.write_text('from torch import nn\nraise RuntimeError("bad [/] markup [bold]x")\n\n'
                      "class RMSNorm(nn.Module):\n    def forward(self, x):\n        return x\n")
    assert cli.main(["check", str(kernel), "--level", "1", "--tiny"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "invalid (import):" in out and 'bad [/] markup [bold]x' in out, out
