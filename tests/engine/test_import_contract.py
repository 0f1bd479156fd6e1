"""import-linter's contracts, checked in CI: the engine never imports the cockpit or Textual, and
each room of the engine imports only the rooms below it (cli > agent > judge > measure > track >
registry > gpu > sandbox > rules > models; pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_does_not_import_the_cockpit_and_its_layers_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The engine never imports the cockpit or Textual KEPT" in proc.stdout
    assert "Layers: each room imports only the rooms below it KEPT" in proc.stdout
    assert "2 kept, 0 broken" in proc.stdout


def test_engine_import_stays_light():
    """Importing the CLI must not pull Textual, MLflow or an LLM SDK (they cost seconds)."""
    code = (
        "import sys, fastkernels.cli, fastkernels.agent.agent, fastkernels.events;"
        "bad=[m for m in ('textual','mlflow','anthropic','openai') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported at start: {out.stdout}"
