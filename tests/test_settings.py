"""engine/settings.py is the one list of environment variables: the code reads them only through it,
`landiff-engine --help` and README.md list them all."""

from __future__ import annotations

import ast
from pathlib import Path

from engine import settings
from engine.cli.main import build_parser
from engine.paths import data_dir, runtime_dir
from tests.harness import ROOT

BEGIN, END = "<!-- settings.markdown() begins -->", "<!-- settings.markdown() ends -->"


def environment_reads(source: str) -> list[str]:
    """Where a module reads a variable itself: os.environ[...], os.environ.get(...), os.getenv(...).
    (Passing the environment on, `{**os.environ}`, is no read.)"""
    found = []
    for node in ast.walk(ast.parse(source)):
        target = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):  # setting one is no read
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("get", "pop", "setdefault"):
                target = node.func.value
            elif node.func.attr == "getenv":
                found.append(f"line {node.lineno}: os.getenv")
        if isinstance(target, ast.Attribute) and target.attr == "environ":
            found.append(f"line {node.lineno}: os.environ")
    return found


def test_the_code_reads_the_environment_only_through_settings():
    offenders = {}
    for package in ("engine", "landiff_tui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "engine" / "settings.py":
                continue
            reads = environment_reads(path.read_text())
            if reads:
                offenders[str(path.relative_to(ROOT))] = reads
    assert offenders == {}


def test_the_scan_finds_each_way_of_reading_a_variable():
    source = (
        'import os\na = os.environ["A"]\nb = os.environ.get("B")\nc = os.getenv("C")\nenv = {**os.environ}\n'
        'os.environ["D"] = "set for a library"\n'
    )
    assert environment_reads(source) == ["line 2: os.environ", "line 3: os.environ", "line 4: os.getenv"]


def test_every_variable_the_project_names_is_in_settings():
    """A LANDIFF_* or HF_* name in the code or the tests that settings lacks is an undocumented one."""
    known = {variable.name for variable in settings.VARIABLES}
    named = set()
    for package in ("engine", "landiff_tui", "tests", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    value = node.value
                    prefix = value.startswith(("LANDIFF_", "HF_")) and value not in ("LANDIFF_", "HF_")
                    if prefix and value.isupper() and " " not in value:
                        named.add(value)
    assert named - known == set()


def test_help_lists_every_variable_with_its_default():
    text = build_parser().format_help()
    for variable in settings.VARIABLES:
        if variable.tests_only:
            assert variable.name not in text
        else:
            assert variable.name in text and f"(default: {variable.default})" in text


def test_readme_lists_the_variables_as_settings_does():
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme, f"README.md lost its {BEGIN} ... {END} markers"
    listed = readme.split(BEGIN)[1].split(END)[0].strip()
    assert listed == settings.markdown(), (
        "README.md's variables differ: paste settings.markdown() between the markers"
    )


def test_an_empty_variable_counts_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", "")
    assert data_dir() == tmp_path / "data"
    assert runtime_dir() != Path("")
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert settings.HF_HUB_OFFLINE.flag()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert settings.hub_endpoint() == "http://127.0.0.1:9"
