"""The engine never imports the cockpit or Textual: import-linter's contract, checked in CI."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_does_not_import_the_cockpit():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


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
