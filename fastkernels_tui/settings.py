"""The cockpit's remembered settings (the theme, for now): a small JSON file under the user's
config directory, or $FASTKERNELS_CONFIG_DIR."""

from __future__ import annotations

import json
import os
from pathlib import Path


def config_dir() -> Path:
    env = os.environ.get("FASTKERNELS_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("fastkernels"))


def settings_path() -> Path:
    return config_dir() / "tui.json"


def load_settings() -> dict:
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(**updates) -> None:
    """Merge `updates` into the file, written atomically (a crash never leaves half a file)."""
    path = settings_path()
    data = {**load_settings(), **updates}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
