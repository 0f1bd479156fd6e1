#!/usr/bin/env python3
"""The pinned install (`constraints.txt`) against what pip would resolve today.

    python scripts/pins.py            # table of the pins that differ from today's resolution
    python scripts/pins.py --write    # rewrite constraints.txt from today's resolution

The README's commands install `.[test]` under `constraints.txt`, so a machine months from now gets
the versions CI tested. This resolves the same requirements without the constraints (pip's
`--dry-run --report`: nothing is installed), with `pyproject.toml`'s own bounds, and lists every
package whose newest allowed version differs from its pin. Moving the pins is then a choice:
`--write`, run the suite, commit the file with what changed in the message.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PROJECT = "fastkernels"
# The torch the README's commands install by name (the CPU build; a GPU machine keeps its own torch,
# so the constraints pin everything but torch).
TORCH = "2.13.0"
UNPINNED = {PROJECT, "torch"}
HEADER = f"""\
# Every package the README's commands install except torch (installed by name, torch=={TORCH}),
# pinned (Python 3.11, Linux x86_64). Used as `pip install -e '.[test]' -c constraints.txt`;
# pyproject.toml keeps loose bounds for people who install fastkernels into their own environment.
# Regenerate on purpose: `python scripts/pins.py` shows what moved, `--write` rewrites this file.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """{canonical name: version} of a constraints file (`name==version` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path.name}: {line!r} is not name==version")
        pins[canonical(name)] = version.strip()
    return pins


def resolve_today(torch_version: str = TORCH) -> dict[str, str]:
    """{canonical name: version} pip picks now for `.[test]` beside `torch_version`, ignoring what is
    installed and without the constraints file (torch itself left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--report", str(report), f"{ROOT}[test]", f"torch=={torch_version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"pip could not resolve the project: {done.stderr.strip().splitlines()[-1:]}")
        items = json.loads(report.read_text())["install"]
    out = {}
    for item in items:
        meta = item["metadata"]
        if canonical(meta["name"]) not in UNPINNED:
            out[canonical(meta["name"])] = meta["version"].split("+", 1)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite constraints.txt from today's resolution")
    args = parser.parse_args(argv)
    pins = read_pins()
    today = resolve_today()
    if args.write:
        CONSTRAINTS.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(today.items())))
        print(f"wrote {len(today)} pins to {CONSTRAINTS.relative_to(ROOT)}")
        return 0
    rows = []
    for name in sorted(set(pins) | set(today)):
        old, new = pins.get(name, "-"), today.get(name, "-")
        if old != new:
            rows.append((name, old, new))
    if not rows:
        print(f"all {len(pins)} pins are what pip resolves today")
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{'package':<{width}}  pinned        today")
    for name, old, new in rows:
        print(f"{name:<{width}}  {old:<12}  {new}")
    print(f"{len(rows)} of {len(pins)} pins differ ('-': not in that set); `--write` moves them all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
