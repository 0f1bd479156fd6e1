"""Prompts carry what the LLM needs (the baseline file as it is, the contract, the inputs, the GPU,
the rules of the path, the user's note, the error on retry), and extract_code finds the kernel file
in the replies LLMs actually write."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

from fastkernels.agent.prompts import (
    MAX_ERROR_CHARS,
    CodeExtractionError,
    Prompt,
    build_generation_prompt,
    build_retry_prompt,
    extract_code,
    library_example,
)
from fastkernels.registry.tasks import build_spec

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def rms():
    return build_spec(1, "rms_norm", LLAMA, tiny=False)


@pytest.fixture(scope="module")
def attention():
    return build_spec(1, "attention", LLAMA, tiny=False)


def test_generation_prompt_carries_the_task(rms):
    p = build_generation_prompt(rms, False)  # the seed's call
    assert isinstance(p, Prompt) and p.system and p.user
    assert rms.source_code in p.user  # the baseline file, verbatim
    assert "`RMSNorm`" in p.user
    # the signatures exactly as the baseline writes them, and the state-dict name to keep
    assert "def __init__(self, hidden_size: int, eps: float = 1e-6): ..." in p.user
    assert "def forward(self, x: torch.Tensor) -> torch.Tensor: ..." in p.user
    assert "`weight`" in p.user
    assert "hidden_size=4096" in p.user and "eps=1e-05" in p.user  # Llama-3.1-8B's config
    # the inputs, traced from the task's make_inputs: [prefill tokens, hidden] at batch 1 x 4096
    assert "forward(bfloat16[4096, 4096]) -> bfloat16[4096, 4096]" in p.user
    assert "forward(float32[1, 4096]) -> float32[1, 4096]" in p.user
    assert "bfloat16, float32" in p.user
    # roofline floor of prefill bf16: (2 * 4096 * 4096 + 4096) * 2 bytes / 3.35e12 B/s = 20.0 us
    assert "roofline floor 20.0 us" in p.user
    assert "assumed" in p.user and "H100" in p.user
    assert "memory-bound" in p.user and "fp32" in p.user
    assert "```python" in p.user and "load_inline" not in p.user and "@triton.jit" in p.user
    assert "Note from the engineer" not in p.user


def test_steering_device_and_example(rms):
    device = SimpleNamespace(name="NVIDIA H200", copy_bandwidth=4.4e12, bf16_flops=989e12, measured=True)
    example = "import triton\n\n# exemplar marker 1234\n"
    p = build_generation_prompt(rms, False, steering="use a persistent grid", device=device, example=example)
    assert "use a persistent grid" in p.user
    assert "NVIDIA H200" in p.user and "4.40 TB/s" in p.user and "measured on this GPU" in p.user
    assert "assumed" not in p.user
    # the floor follows the device: 67117056 bytes / 4.4e12 B/s = 15.3 us
    assert "roofline floor 15.3 us" in p.user
    assert "exemplar marker 1234" in p.user


def test_measured_ceilings_dict_from_the_roofline(rms):
    ceilings = {"gpu": "NVIDIA H100 80GB HBM3", "copy_bytes_per_s": 2.9e12, "bf16_flops_per_s": 7.5e14}
    p = build_generation_prompt(rms, False, device=ceilings)
    assert "NVIDIA H100 80GB HBM3: copy bandwidth 2.90 TB/s, bf16 tensor cores 750 TFLOP/s (measured" in p.user
    # 67117056 bytes / 2.9e12 B/s = 23.1 us
    assert "roofline floor 23.1 us" in p.user


def test_library_example_picks_own_kernel_then_house_style(rms, attention, tmp_path, monkeypatch):
    root = tmp_path / "tasks"
    (root / "library" / "L1").mkdir(parents=True)
    monkeypatch.setenv("FASTKERNELS_TASKS", str(root))
    assert library_example(rms) is None  # an empty library
    (root / "library" / "L1" / "rms_norm.py").write_text("# rms kernel\n")
    assert library_example(rms) == "# rms kernel\n"
    assert library_example(attention) == "# rms kernel\n"  # no attention kernel: the house style
    (root / "library" / "L1" / "attention.py").write_text("# attention kernel\n")
    assert library_example(attention) == "# attention kernel\n"
    assert library_example(attention, cuda_only=True) is None


def test_cuda_only_rules(rms):
    p = build_generation_prompt(rms, True)
    assert "raw CUDA" in p.system
    assert "load_inline" in p.user and "Do not import triton" in p.user
    assert "No PyTorch" in p.user and "getCurrentCUDAStream" in p.user
    assert "@triton.jit" not in p.user


def test_guidance_follows_what_bounds_the_op(rms, attention):
    assert "tensor cores" not in build_generation_prompt(rms, False).user.split("## Performance guidance")[1].split("##")[0]
    att = build_generation_prompt(attention, False).user
    guidance = att.split("## Performance guidance")[1].split("## Rules")[0]
    # attention: compute-bound prefill and memory-bound decode, so both kinds of advice
    assert "tensor cores" in guidance and "bytes moved / bandwidth" in guidance
    assert "class Attention" in att and attention.source_code in att


def test_retry_prompt_carries_code_and_error(rms):
    code = "class RMSNorm:\n    pass  # failing attempt marker\n"
    error = "AssertionError: max abs diff 0.125 at shape prefill (bfloat16)"
    p = build_retry_prompt(rms, code, error)  # the seed's call
    assert rms.source_code in p.user and code.rstrip() in p.user and error in p.user
    p2 = build_retry_prompt(rms, code, error, cuda_only=True, steering="keep the weight in shared memory", attempt=3)
    assert "attempt 2" in p2.user and "keep the weight in shared memory" in p2.user and "load_inline" in p2.user
    p3 = build_retry_prompt(rms, None, "Your reply contained no code.")
    assert "no code could be taken" in p3.user


def test_retry_prompt_clips_long_errors_keeping_both_ends(rms):
    error = "HEAD-OF-LOG\n" + "noise line\n" * 5000 + "TAIL-OF-LOG: illegal memory access"
    p = build_retry_prompt(rms, "x = 1", error)
    assert "HEAD-OF-LOG" in p.user and "TAIL-OF-LOG: illegal memory access" in p.user
    assert "characters cut" in p.user
    assert len(p.user) < len(build_generation_prompt(rms, False).user) + MAX_ERROR_CHARS + 2000


# ---- extract_code ---------------------------------------------------------------------------------------

KERNEL = textwrap.dedent('''\
    import torch
    from torch import nn


    class SiluAndMul(nn.Module):
        def forward(self, gate, up):
            return _launch(gate, up)
    ''')
HELPERS = textwrap.dedent('''\
    import triton


    def _launch(gate, up):
        return gate * up
    ''')


@pytest.mark.parametrize("fence", ["```python", "```py", "```", "```Python3", "~~~python"])
def test_extract_one_block_any_fence(fence):
    close = "~~~" if fence.startswith("~") else "```"
    reply = f"Here it is.\n\n{fence}\n{KERNEL}{close}\n\nThis fuses both loads."
    assert extract_code(reply, "SiluAndMul") == KERNEL


def test_extract_picks_the_block_with_the_class():
    reply = (f"Run it with:\n\n```bash\npip install triton\n```\n\nFirst a sketch:\n\n```python\nx = gate * up\n```\n\n"
             f"The file:\n\n```python\n{KERNEL}```\n")
    assert extract_code(reply, "SiluAndMul") == KERNEL


def test_extract_takes_the_last_revision():
    first = KERNEL.replace("_launch(gate, up)", "gate * up  # draft")
    reply = f"Draft:\n```python\n{first}```\nBetter:\n```python\n{KERNEL.replace('_launch', 'fused')}```\n"
    assert extract_code(reply, "SiluAndMul") == KERNEL.replace("_launch", "fused")


def test_extract_joins_helper_blocks_the_class_needs():
    reply = f"Kernels:\n```python\n{HELPERS}```\nModule:\n```python\n{KERNEL}```\n"
    code = extract_code(reply, "SiluAndMul")
    assert code == HELPERS.rstrip() + "\n\n\n" + KERNEL
    compile(code, "candidate.py", "exec")


def test_extract_unclosed_fence_runs_to_the_end():
    reply = f"```python\n{KERNEL}"  # cut at the token limit
    assert extract_code(reply, "SiluAndMul") == KERNEL


def test_extract_indented_fence_in_a_list():
    reply = "1. The file:\n\n   ```python\n" + textwrap.indent(KERNEL, "   ") + "   ```\n"
    assert extract_code(reply, "SiluAndMul") == KERNEL


def test_extract_bare_code_without_fences():
    assert extract_code(KERNEL, "SiluAndMul") == KERNEL


def test_extract_without_class_returns_the_largest_block():
    reply = "```python\nx = 1\n```\n```python\ndef f():\n    return 2\n```\n"
    assert extract_code(reply, "SiluAndMul") == "def f():\n    return 2\n"


@pytest.mark.parametrize("reply", ["", "   \n", "I need more details about the GPU before I can write this.",
                                   "```python\n\n```\nnothing here"])
def test_extract_no_code_is_an_error_fit_for_the_llm(reply):
    with pytest.raises(CodeExtractionError) as info:
        extract_code(reply, "SiluAndMul")
    assert "```python" in str(info.value)


def test_extract_cuda_block_only_says_where_cuda_goes():
    reply = "```cuda\n__global__ void k(float* x) { x[0] = 1; }\n```\n"
    with pytest.raises(CodeExtractionError, match="load_inline"):
        extract_code(reply, "SiluAndMul")
