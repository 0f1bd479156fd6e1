"""What counts as a secret, defined once: the sandbox keeps these variables from its children, and
tracking, history and every report blank them.

- Environment variables named like credentials (`*_API_KEY`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`,
  `*CREDENTIAL*`, private/access keys, `*AUTH*` but not AUTHOR), except the settings in NOT_SECRETS.
- Text shaped like a known key (`sk-...`, `hf_...`, `ghp_...`, `AKIA...`, bearer tokens,
  `api_key=...`), and the value of any secret-named field.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Any, Mapping

REDACTED = "[REDACTED]"
NOT_SECRETS = frozenset({"TOKENIZERS_PARALLELISM"})  # matches *TOKEN* but is a setting

# Environment variables whose values are secrets (*_API_KEY, *TOKEN*, ...). "AUTH" but not AUTHOR.
_SECRET_ENV = re.compile(r"API_?KEY|TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|PRIVATE_?KEY|ACCESS_?KEY|AUTH(?!OR)", re.I)
# Param/field names whose values are secrets. Narrower than the env rule: `max_tokens` is not one.
_SECRET_FIELD = re.compile(
    r"api[_-]?key|secret|passw(or)?d|credential|private[_-]?key|access[_-]?key"
    r"|(^|[_.-])auth(orization)?$|(^|[_.-])token$|^token$", re.I)
_KEY_SHAPES = re.compile(
    r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}"          # OpenAI sk-..., sk-proj-..., Anthropic sk-ant-...
    r"|hf_[A-Za-z0-9]{20,}"                        # Hugging Face
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"
    r"|AKIA[0-9A-Z]{16}"                           # AWS access key id
    r"|AIza[0-9A-Za-z_\-]{30,}"                    # Google
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"             # Slack
)
_BEARER = re.compile(r"\b(bearer|basic)(\s+)[A-Za-z0-9._~+/\-]{12,}=*", re.I)
# `api_key = "..."`, `"token": "..."`, `Authorization: ...` with a secret-looking value.
_ASSIGNED = re.compile(
    r"((?<![A-Za-z0-9])(?:api[_-]?key|secret|password|passwd|token|authorization|x-api-key)"
    r"[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9_\-./+=]{16,})", re.I)
_MIN_SECRET_LEN = 8  # shorter env values ("1", "false", "main") are too common to blank everywhere


def _env_secrets() -> list[str]:
    values = {v for k, v in os.environ.items() if is_secret_env(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)  # longest first: a key that contains another


def scrub(text: Any) -> str:
    """`text` as a string with every secret blanked (see the module docstring)."""
    s = text if isinstance(text, str) else str(text)
    for secret in _env_secrets():
        if secret in s:
            s = s.replace(secret, REDACTED)
    s = _KEY_SHAPES.sub(REDACTED, s)
    s = _BEARER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, s)
    return _ASSIGNED.sub(lambda m: m.group(1) + REDACTED, s)


def is_secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.search(str(name)))


def scrub_obj(obj: Any) -> Any:
    """A scrubbed copy of a JSON-like structure: strings scrubbed, secret-named string fields
    blanked, numbers and bools kept, anything else turned into its scrubbed str()."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            key = scrub(k)
            out[key] = REDACTED if (isinstance(v, str) and v and is_secret_field(k)) else scrub_obj(v)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [scrub_obj(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, numbers.Real):  # numpy scalars
        return float(obj)
    if hasattr(obj, "to_dict"):
        return scrub_obj(obj.to_dict())
    return scrub(obj)


def is_secret_env(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (its value is never passed to a
    child, logged or shown)."""
    return name.upper() not in NOT_SECRETS and bool(_SECRET_ENV.search(name))


def scrubbed_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) without secret-named variables, for child processes
    that have no business holding keys (sandboxed jobs, the MLflow server)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if not is_secret_env(k)}


# What a sandboxed job's environment may hold: names a kernel, a compiler, PyTorch, Triton, CUDA,
# NCCL or our own harness read, and nothing else (a database URL, a webhook, a personal access token
# under a name no pattern foresees never reaches untrusted code). Secret-named ones are dropped even
# here (HF_TOKEN under HF_).
SANDBOX_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CC", "CXX", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM", "XDG_CACHE_HOME", "MASTER_ADDR", "MASTER_PORT",
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SYSTEMROOT",
    # where a raw CUDA kernel's build (torch.utils.cpp_extension) finds headers, libraries, the compiler
    "CPATH", "LIBRARY_PATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "CUDACXX", "MAX_JOBS", "CONDA_PREFIX",
})
SANDBOX_ENV_PREFIXES = ("LC_", "PYTHON", "CUDA_", "NVIDIA_", "NVCC_", "NCCL_", "TRITON_", "TORCH_", "TORCHINDUCTOR_",
                        "TORCHDYNAMO_", "PYTORCH_", "CUBLAS", "CUDNN_", "KINETO_", "HF_", "TRANSFORMERS_",
                        "FASTKERNELS_")


def sandbox_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed copy of `env` (default os.environ) a sandboxed job starts with."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items()
            if (k in SANDBOX_ENV_NAMES or k.startswith(SANDBOX_ENV_PREFIXES)) and not is_secret_env(k)}

