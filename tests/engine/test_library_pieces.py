"""Library files share pieces (tasks/library/_shared: the L1 launch path, the L2-L4 blocks) through
`# fastkernels: include` lines: whatever reads a kernel file gets it whole, one self-contained
module, with no such line left; the pieces exist once."""

import ast
from types import SimpleNamespace

import pytest

from fastkernels.agent.llm.library import LibraryBackend
from fastkernels.agent.prompts import extract_code
from fastkernels.errors import UsageError
from fastkernels.judge.validate import static_check
from fastkernels.registry.patching import find_candidates
from fastkernels.registry.tasks import (
    expand_includes,
    kernel_source,
    library_dir,
    load_module,
    load_task,
    shared_dir,
    task_names,
    tasks_root,
)

LIBRARY_FILES = [library_dir(lvl) / f"{op}.py" for lvl in (1, 2, 3, 4) for op in task_names(lvl)
                 if (library_dir(lvl) / f"{op}.py").is_file()]


def test_every_piece_is_included_somewhere_and_every_library_file_is_served_whole():
    used = set()
    for path in LIBRARY_FILES:
        raw, served = path.read_text(), kernel_source(path)
        task = load_task(int(path.parent.name[1:]), path.stem)
        assert static_check(served, task.CLASS_NAME) is None, path  # what the agent's gate checks first
        used |= {ln.split()[-1] for ln in raw.splitlines() if ln.startswith("# fastkernels: include ")}
        assert "# fastkernels: include" not in served and "# fastkernels: piece" not in served, path
        names = {n.name for n in ast.parse(served).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert len(names) == len([n for n in ast.parse(served).body
                                  if isinstance(n, (ast.FunctionDef, ast.ClassDef))]), f"{path}: a name defined twice"
    assert used == {p.stem for p in shared_dir().glob("*.py")}
    # the biggest file is mostly pieces: L4 splices in everything
    assert len(kernel_source(library_dir(4) / "causal_lm.py")) > 2.5 * len((library_dir(4) / "causal_lm.py").read_text())


def test_the_library_backend_and_candidate_directories_hand_over_the_whole_file():
    path = library_dir(3) / "decoder_layer.py"
    op = SimpleNamespace(name="decoder_layer", level=3, class_name="DecoderLayer", source_code="")
    served = extract_code(LibraryBackend().generate(None, lambda t: None, op=op, attempt=1).text, "DecoderLayer")
    assert served == kernel_source(path).rstrip() + "\n"
    assert "def add_rms_norm(" in served and "def _rope_kernel(" in served and "include" not in served
    codes = find_candidates(tasks_root() / "library", 3)
    assert codes["L3/decoder_layer"] == kernel_source(path)


def test_load_module_imports_the_served_text():
    module = load_module(library_dir(2) / "mlp_block.py", name="fk_test_pieces_mlp")
    assert callable(module.silu_and_mul) and isinstance(module.MLP, type)
    # its file is the expanded text (Triton reads kernel source back from it)
    assert open(module.__file__).read() == kernel_source(library_dir(2) / "mlp_block.py")


def test_include_errors_name_the_piece(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="no shared piece .*nonexistent"):
        expand_includes("x = 1\n# fastkernels: include nonexistent\n")
    (tmp_path / "library" / "_shared").mkdir(parents=True)
    (tmp_path / "library" / "_shared" / "loop.py").write_text("# fastkernels: piece\n# fastkernels: include loop\n")
    (tmp_path / "library" / "_shared" / "bare.py").write_text("x = 1\n")
    monkeypatch.setenv("FASTKERNELS_TASKS", str(tmp_path))
    with pytest.raises(UsageError, match="includes itself"):
        expand_includes("# fastkernels: include loop\n")
    with pytest.raises(UsageError, match="no `# fastkernels: piece` line"):
        expand_includes("# fastkernels: include bare\n")
    assert expand_includes("plain = True\n") == "plain = True\n"
