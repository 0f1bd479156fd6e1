"""Cheat (appended to correct_rms_norm.py): at import, writes a passing result into its job's result file (its folder is on the
command line) and exits before the harness runs anything."""

import json as _json
import os as _os
import sys as _sys

_forged = {"device": "cpu", "cases": [], "timing": {}, "phase_seconds": {}}
with open(_os.path.join(_sys.argv[1], "result.json"), "w") as _fh:
    _json.dump({"ok": True, "value": {"results": [_forged]}}, _fh)
_os._exit(0)
