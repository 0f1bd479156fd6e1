"""Candidate implementations on disk or in a dict: which operators a folder laid out like
tasks/candidate (L{level}/{op}.py) holds, read without importing them (`find_candidates`), and
each loaded into its class (`load_implementations`), raw CUDA builds served from the cache."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from torch import nn

from fastkernels.errors import UsageError
from fastkernels.registry.tasks import (
    LEVELS,
    kernel_source,
    load_module,
    load_task,
    task_names,
)


@dataclass
class Implementation:
    """One operator implementation to bind: its task (the baseline file) and its class."""

    level: int
    op: str
    cls: type
    source: str  # where it came from (a path, or "<code>")

    @property
    def key(self) -> str:
        return f"L{self.level}/{self.op}"

    def task(self):
        return load_task(self.level, self.op)


def level_of(op: str, level: int | None) -> int:
    if level is not None:
        if op not in task_names(level):
            raise UsageError(f"no operator {op!r} at level {level}; level {level} has: {', '.join(task_names(level))}")
        return level
    found = [lvl for lvl in LEVELS if op in task_names(lvl)]
    if not found:
        raise UsageError(f"no operator named {op!r} at any level; write it as 'L<level>/<op>'")
    if len(found) > 1:
        raise UsageError(f"operator {op!r} exists at levels {found}; write it as 'L<level>/{op}'")
    return found[0]


def _load_class(level: int, op: str, path: Path, source: str) -> Implementation:
    from fastkernels.gpu.cuda_build import cached_builds

    task = load_task(level, op)
    with cached_builds():  # a raw CUDA kernel's load_inline: content-cached, built for this GPU
        module = load_module(path)
    cls = getattr(module, task.CLASS_NAME, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise UsageError(f"{source} defines no nn.Module class {task.CLASS_NAME!r} (the class L{level}/{op} needs)")
    return Implementation(level=level, op=op, cls=cls, source=source)


def load_implementations(candidates, level: int | None = None, only: Iterable[str] | None = None) -> list[Implementation]:
    """The implementations named by `candidates`: a directory laid out like tasks/candidate
    (L{level}/{op}.py; only L{level} when level is given) or a dict {op or "L1/op": code or path}.
    `only` keeps those keys ("L1/rms_norm" or "rms_norm"). Sorted highest level first: a swapped
    decoder layer hides the kernels inside it, so the outer binding goes in first."""
    impls: list[Implementation] = []
    if isinstance(candidates, Mapping):
        tmp = None
        for key, value in candidates.items():
            lvl_part, _, op = str(key).rpartition("/")
            lvl = level_of(op, int(lvl_part.lstrip("Ll")) if lvl_part else level)
            if level is not None and lvl != level:
                continue
            path = Path(value) if isinstance(value, Path) else None
            if path is None and isinstance(value, str) and "\n" not in value and value.endswith(".py"):
                path = Path(value)
            if path is not None:
                if not path.is_file():
                    raise UsageError(f"candidate file {path} does not exist")
                impls.append(_load_class(lvl, op, path, str(path)))
            else:
                if tmp is None:
                    tmp = Path(tempfile.mkdtemp(prefix="fk-candidates-"))
                file = tmp / f"L{lvl}_{op}.py"
                file.write_text(str(value))
                impls.append(_load_class(lvl, op, file, f"<code of L{lvl}/{op}>"))
    else:
        for lvl, path in _candidate_files(candidates, level):
            impls.append(_load_class(lvl, path.stem, path, str(path)))
    if only is not None:
        wanted = set(only)
        impls = [i for i in impls if i.key in wanted or i.op in wanted]
    impls.sort(key=lambda i: (-i.level, i.op))
    return impls


def find_candidates(candidates, level: int | None = None) -> dict[str, str]:
    """{"L1/op": source code} of the candidates named like `load_implementations` takes them,
    without importing anything (what crosses into a sandbox child)."""
    out: dict[str, str] = {}
    if isinstance(candidates, Mapping):
        for key, value in candidates.items():
            lvl_part, _, op = str(key).rpartition("/")
            lvl = level_of(op, int(lvl_part.lstrip("Ll")) if lvl_part else level)
            if level is not None and lvl != level:
                continue
            is_path = isinstance(value, Path) or (isinstance(value, str) and "\n" not in value and value.endswith(".py"))
            if is_path and not Path(value).is_file():
                raise UsageError(f"candidate file {value} does not exist")
            out[f"L{lvl}/{op}"] = kernel_source(value) if is_path else str(value)
        return out
    for lvl, path in _candidate_files(candidates, level):
        out[f"L{lvl}/{path.stem}"] = kernel_source(path)
    return out


def _candidate_files(root, level: int | None) -> list[tuple[int, Path]]:
    """(level, path) of every file of a folder laid out like tasks/candidate that names an operator
    of its level (summaries and status files beside them are not candidates)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"candidate directory {root} does not exist")
    out = []
    for lvl in ([level] if level is not None else list(LEVELS)):
        folder = root / f"L{lvl}"
        known = set(task_names(lvl))
        out += [(lvl, path) for path in sorted(folder.glob("*.py")) if folder.is_dir() and path.stem in known]
    return out


