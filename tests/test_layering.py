"""The layering contracts of pyproject.toml hold: data <- models <- probes <- report <- experiments <- cli, the
stage engine imports no experiment, the tiny world is used by experiments only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    found = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(found).is_file():
        pytest.fail("lint-imports not installed: pip install -e '.[dev]' (import-linter)")
    return found


def test_import_contracts_hold():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([lint_imports()], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout and "3 kept" in run.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    # The same contracts on a copy of the package in which the engine imports an experiment must fail.
    copy = tmp_path / "repo"
    shutil.copytree(
        REPO / "subliminal_pl", copy / "subliminal_pl", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    engine = copy / "subliminal_pl" / "pipeline.py"
    engine.write_text(engine.read_text() + "\nfrom subliminal_pl.experiments import spec  # noqa\n")
    env = dict(os.environ, PYTHONPATH=str(copy))
    run = subprocess.run([lint_imports()], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "The stage engine imports no experiment BROKEN" in run.stdout
