"""Loading a run changes no process-wide state: importing the training and inference modules leaves
``warnings.filters`` and every logger's level and filters as they were (issue 17, "no global state")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
TARGETS = ("pneumoseg.training.run", "pneumoseg.inference.predictor")
# io/dicom/read.py adds its reader's pydicom log filter at import (inert outside a read): imported first, not judged
BEFORE = ("pneumoseg.io.dicom.read",)
# the third-party modules the targets pull in (imported first: their own import-time settings are theirs)
LIST = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps([m for m in sys.modules if not m.startswith("pneumoseg")]))
"""
# third-party modules (stdin), then BEFORE, then each target in turn: what did each target change?
PROBE = """
import importlib, json, logging, sys, warnings

def snapshot():
    loggers = {name: (lg.level, [repr(f) for f in lg.filters])
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    loggers["<root>"] = (logging.root.level, [repr(f) for f in logging.root.filters])
    return [repr(f) for f in warnings.filters], loggers

for name in json.loads(sys.stdin.read()):
    try:
        importlib.import_module(name)
    except Exception:
        pass
targets, before = sys.argv[1].split(","), sys.argv[2].split(",")
for name in before:
    importlib.import_module(name)
changed = {}
for target in targets:
    filters, loggers = snapshot()
    importlib.import_module(target)
    filters_after, loggers_after = snapshot()
    changed[target] = {"warnings": [f for f in filters_after if f not in filters],
                       "loggers": {n: v for n, v in loggers_after.items() if n in loggers and loggers[n] != v}}
print(json.dumps(changed))
"""


def run(*args: str, stdin: str = "") -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", *args], input=stdin, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_changes_no_warning_filter_or_logger() -> None:
    third_party = run(LIST, *TARGETS)
    changed = json.loads(run(PROBE, ",".join(TARGETS), ",".join(BEFORE), stdin=third_party))
    assert changed == {t: {"warnings": [], "loggers": {}} for t in TARGETS}
