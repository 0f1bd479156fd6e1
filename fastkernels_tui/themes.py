"""Themes as data: every `*.toml` in the project's themes/ folder and in the user's
`<config dir>/themes/` becomes a registered Textual theme (a user's file of the same name wins).

A theme file:

    name = "fastkernels-ember"
    dark = true
    primary = "#F08A24"      # any Textual Theme field: secondary, accent, background, surface, ...
    [variables]              # optional Textual design variables
    footer-key-foreground = "#F08A24"
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from textual.theme import Theme

from fastkernels.errors import UsageError
from fastkernels_tui.settings import config_dir

DEFAULT_THEME = "fastkernels-ember"
_FIELDS = {f.name for f in dataclasses.fields(Theme)}


def bundled_themes_dir() -> Path:
    """The shipped themes: package data in an installed copy (pyproject.toml maps themes/ to
    fastkernels_tui/bundled_themes), else themes/ of the checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "bundled_themes"
    return installed if installed.is_dir() else here.parent / "themes"


def theme_dirs() -> list[Path]:
    return [bundled_themes_dir(), config_dir() / "themes"]


def theme_from_file(path: Path) -> Theme:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"theme file {path} is not valid TOML ({exc}); fix or remove it") from None
    unknown = set(data) - _FIELDS
    if unknown:
        raise UsageError(f"theme file {path}: unknown keys {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(_FIELDS))}")
    if "name" not in data or "primary" not in data:
        raise UsageError(f"theme file {path} needs at least `name` and `primary`")
    return Theme(**data)


def load_themes(dirs: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """All theme files found, later folders overriding earlier ones by name; plus one warning line
    per file that could not be read (a broken user theme never stops the app)."""
    themes: dict[str, Theme] = {}
    warnings = []
    for d in dirs if dirs is not None else theme_dirs():
        for path in sorted(Path(d).glob("*.toml")):
            try:
                theme = theme_from_file(path)
            except UsageError as exc:
                warnings.append(str(exc))
                continue
            themes[theme.name] = theme
    return list(themes.values()), warnings
