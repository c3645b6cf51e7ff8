"""engine/ and landiff_tui/ type-check with mypy as [tool.mypy] in pyproject.toml configures it: strict on
the protocol, the parameter schema and both clients, checked everywhere else."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy brings tomli
    import tomli as tomllib

from engine.generation.job import JobRules
from engine.params import PARAMS

from .harness import ROOT

CONFIG = ROOT / "pyproject.toml"


def test_engine_and_tui_type_check(tmp_path):
    """In a process of its own: mypy's command line skips tearing down what it built (a minute in-process)."""
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(tmp_path)]
        + [str(ROOT / "engine"), str(ROOT / "landiff_tui")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_strict_modules_exist():
    """A module renamed away from the override would quietly lose its strictness."""
    overrides = tomllib.loads(CONFIG.read_text())["tool"]["mypy"]["overrides"]
    strict = [
        module
        for override in overrides
        if override.get("follow_imports") != "skip"  # the third-party ones checked as Any
        for module in override["module"]
    ]
    wire = {"engine.protocol", "engine.params", "engine.client", "landiff_tui.client", "engine.cli.*"}
    assert wire <= set(strict)
    # a package's pattern ("engine.cli.*") names the package
    named = [module.removesuffix(".*") for module in strict]
    assert [module for module in named if importlib.util.find_spec(module) is None] == []


def test_what_the_type_checker_is_told_of_a_job_matches_the_schema():
    """JobSpec is made at run time from the schema; JobRules tells the checker the fields the pipeline
    reads, which must be schema parameters (or the job's own out and tokens)."""
    declared = set(JobRules.__annotations__) - {"out", "tokens"}
    assert declared <= {param.name for param in PARAMS}
