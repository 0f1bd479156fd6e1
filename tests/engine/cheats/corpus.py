"""The cheat corpus: each cheat is a kernel file of its own here, or, where it is the honest kernel
(correct_rms_norm.py) with something appended, that trailer in trailers/."""

from pathlib import Path

CHEATS = Path(__file__).parent
NOT_CHEATS = ("faults", "corpus", "correct_rms_norm", "raw_launch")


def source(name: str) -> str:
    """The whole kernel file of cheat `name` (or of correct_rms_norm, raw_launch)."""
    path = CHEATS / f"{name}.py"
    if path.is_file():
        return path.read_text()
    trailer = (CHEATS / "trailers" / f"{name}.py").read_text()
    return (CHEATS / "correct_rms_norm.py").read_text() + "\n\n" + trailer


def names() -> list[str]:
    """Every cheat's name, files and trailers alike."""
    own = {p.stem for p in CHEATS.glob("*.py")} | {p.stem for p in (CHEATS / "trailers").glob("*.py")}
    return sorted(own - set(NOT_CHEATS))
