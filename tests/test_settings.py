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


def test_readme_starts_with_the_two_fresh_machine_commands_and_ci_runs_the_test_one():
    """Issue 26, point 15: the README's first two commands install and run the app, then install and run the
    tests; torch comes from PyTorch's CPU index (the public index's Linux wheels pull CUDA packages whatever
    the pin); the README says where to run them; .ci/run installs the same pin and runs the same tests."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    top = readme.split("\n## ")[0]
    commands = [line.strip() for line in top.splitlines() if line.startswith("    ")]
    assert len(commands) == 2, commands
    app, tests = (command.split(" && ") for command in commands)
    torch_step = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert app == [torch_step, "pip install -e .", "landiff-tui --model tiny"]
    assert tests == [torch_step, "pip install -e '.[test]'", "python -m pytest"]
    assert "git clone" in top and "cd landiff-tui" in top and "python3 -m venv .venv" in top
    assert "`pip install torch==2.13.0` as the first step instead" in top  # a GPU box: the public index
    ci = [
        shlex.split(line)
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if re.match(r"python -m (pip|pytest)", line)
    ]
    pin = shlex.split(torch_step)[2]
    assert ci == [
        ["python", "-m", "pip", "install", "--quiet", pin],
        ["python", "-m", "pip", "install", "--quiet", "-e", ".[test]"],
        ["python", "-m", "pytest"],
    ]
