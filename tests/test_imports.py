"""The trainer and the spaces are usable without Optuna: importing them must not load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys

def optuna_modules():
    return sorted(m for m in sys.modules if m == "optuna" or m.startswith("optuna."))

import {module}
probe = {{"file": {module}.__file__, "optuna": optuna_modules()}}
import search.experiments.objective  # the control: this one does need Optuna
probe["optuna_after_search"] = optuna_modules()
print(json.dumps(probe))
"""


def _fresh_import(module: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["trainer", "spaces"])
def test_import_loads_no_optuna(module):
    probe = _fresh_import(module)
    # the real package, not a namespace package shadowed by tests/<module>
    assert probe["file"] == str(REPO / module / "__init__.py")
    assert probe["optuna"] == []
    assert "optuna" in probe["optuna_after_search"]  # the probe would see it
