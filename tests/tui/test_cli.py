"""`fastkernels tui` comes in through the `fastkernels.commands` entry point; its flags become
session options with the documented defaults; a bad level is a one-line usage error."""

from __future__ import annotations

import pytest

from fastkernels.cli import build_parser, main
from fastkernels_tui.cli import options_from_args


def test_tui_subcommand_is_registered_and_parses_every_flag():
    args = build_parser().parse_args(["tui", "--model", "Qwen/Qwen3-8B", "--level", "2", "--tiny", "--llm-model",
                                      "openai:qwen", "--llm-base-url", "http://127.0.0.1:8000/v1", "--theme",
                                      "fastkernels-paper", "--auto-approve", "--max-retries", "2"])
    opts = options_from_args(args, gpu=False)
    assert (opts.model, opts.level, opts.tiny, opts.llm_model) == ("Qwen/Qwen3-8B", 2, True, "openai:qwen")
    assert (opts.llm_base_url, opts.theme, opts.auto_approve, opts.max_retries) == (
        "http://127.0.0.1:8000/v1", "fastkernels-paper", True, 2)
    assert not opts.notes  # a model was named: nothing decided for the user


def test_no_options_without_gpu_is_the_tiny_llama_at_level_1():
    opts = options_from_args(build_parser().parse_args(["tui"]), gpu=False)
    assert (opts.model, opts.level, opts.tiny, opts.llm_model) == (
        "meta-llama/Llama-3.1-8B-Instruct", 1, True, "claude-opus-4-6")
    assert opts.notes and "No NVIDIA GPU" in opts.notes[0]
    assert not opts.auto_approve  # review is on in the cockpit


def test_bad_level_is_a_usage_error(capsys):
    assert main(["tui", "--level", "7"]) == 2
    err = capsys.readouterr().err
    assert "bad level" in err and "Traceback" not in err


def test_help_text(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["tui", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--llm-model" in out and "--auto-approve" in out and "--theme" in out


def test_out_as_the_agent_spells_it_and_out_dir_still_works(tmp_path):
    for flag in ("--out", "--out-dir"):
        opts = options_from_args(build_parser().parse_args(["tui", flag, str(tmp_path)]), gpu=False)
        assert str(opts.out_dir) == str(tmp_path)


def test_unknown_model_and_a_model_too_big_for_a_cpu_fail_before_the_app_starts(capsys, monkeypatch):
    assert main(["tui", "--model", "foo/bar"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'foo/bar'" in err and "Known models:" in err and "Traceback" not in err
    import psutil

    monkeypatch.setattr("fastkernels_tui.options.has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 24 * 2**30})())
    assert main(["tui", "--model", "meta-llama/Llama-3.1-8B-Instruct"]) == 2
    err = capsys.readouterr().err
    assert "needs about 45 GiB of RAM" in err and "24.0 GiB is free" in err and "--tiny" in err
