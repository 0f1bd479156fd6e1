"""Cheat (appended to correct_rms_norm.py): reads its exchange folder from the job's payload and puts a folder where the parent's
word to start timing would go, so the parent cannot say it (the parent must not crash or hang)."""

import json as _json
import os as _os
import sys as _sys

with open(_os.path.join(_sys.argv[1], "payload.json")) as _fh:
    for _item in _json.load(_fh)["items"]:
        _os.makedirs(_os.path.join(_item["dir"], "go.json"), exist_ok=True)
