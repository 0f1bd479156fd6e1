"""The pinned install: `constraints.txt` pins every direct dependency the README's commands install,
and each pin satisfies the bounds `pyproject.toml` gives (moving a bound without moving its pin, or
adding a dependency without pinning it, fails here rather than on a user's machine next month)."""

import importlib.util

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def load_pins_script():
    spec = importlib.util.spec_from_file_location("pins", ROOT / "scripts" / "pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": "test"})]


def test_every_direct_dependency_is_pinned_inside_its_pyproject_bounds():
    script = load_pins_script()
    pins = {**script.read_pins(), "torch": script.TORCH}  # torch is installed by name, not constrained
    assert "torch" not in script.read_pins(), "a pinned torch would replace a GPU machine's own"
    reqs = direct_requirements()
    assert {"transformers", "triton", "numpy", "textual", "mlflow", "torch"} <= {r.name for r in reqs}
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is a dependency but constraints.txt does not pin it"
        assert Version(pins[name]) in req.specifier, f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_readme_and_ci_install_through_the_constraints():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    torch = load_pins_script().TORCH
    for text in (readme, ci):
        assert f"pip install torch=={torch} -c constraints.txt && pip install -e '.[test]' -c constraints.txt" in text


def test_a_constraints_line_that_is_not_an_exact_pin_is_refused(tmp_path):
    bad = tmp_path / "constraints.txt"
    bad.write_text("# comment\nrich==14.0.0\ntransformers>=5.17\n")
    with pytest.raises(ValueError, match="transformers>=5.17"):
        load_pins_script().read_pins(bad)


def test_pyproject_lists_every_package_of_the_tree():
    """pyproject.toml lists its packages (tasks/ and themes/ are mapped into them); a new subpackage
    left off the list would be missing from every non-editable install."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for root in ("fastkernels", "fastkernels_tui")
             for p in (ROOT / root).rglob("__init__.py")}
    mapped = setuptools["package-dir"]
    assert set(setuptools["packages"]) == found | set(mapped)
    assert all((ROOT / folder).is_dir() for folder in mapped.values())


def test_a_wheel_carries_the_tasks_and_the_themes(tmp_path):
    """What a non-editable install gets: every baseline and library file and every bundled theme,
    where fastkernels.registry.tasks.tasks_root() and fastkernels_tui.themes look for them."""
    import subprocess
    import sys
    import zipfile

    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("fastkernels-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {f"fastkernels/tasks/{p.relative_to(ROOT / 'tasks').as_posix()}"
            for sub in ("baseline", "library") for p in (ROOT / "tasks" / sub).rglob("*.py")}
    tree |= {f"fastkernels_tui/bundled_themes/{p.name}" for p in (ROOT / "themes").glob("*.toml")}
    assert len(tree) > 40 and tree <= names, sorted(tree - names)[:5]
    assert not any("/candidate/" in n for n in names)
