"""Cheat (appended to correct_rms_norm.py): writes a result file that is not a dict into its job's folder and exits (the parent must
answer with a failed report, not an exception)."""

import os as _os
import sys as _sys

with open(_os.path.join(_sys.argv[1], "result.json"), "w") as _fh:
    _fh.write("[0]")
_os._exit(0)
