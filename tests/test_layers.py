"""The arrows between the layers (README: "Layout"), checked on the source's import graph.

Each rule is a function of an ImportGraph that returns its violations. The rules run on the project,
where they must find nothing, and on a small made-up project that breaks each one, where they must
find exactly that: a rule that cannot fail is not a check.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from tests.harness import ROOT, WAIT_S
from tests.layers import ImportGraph

PACKAGES = ("engine", "landiff_tui")

# Torch-free modules at the engine's base: the wire, the schema, settings, paths, specs, the blocking client.
# Clients (the TUI, the CLI's client commands) may use these and nothing else of the engine.
CLIENT_SIDE = {
    "engine",  # the package's __init__ only
    "engine.wire",
    "engine.protocol",
    "engine.params",
    "engine.settings",
    "engine.paths",
    "engine.client",
    "engine.errors",
    "engine.job_words",
    "engine.durations",
    "engine.notify",  # the job-end escape sequences, standard library only
    "engine.variations",  # --seeds and --sweep expanded into jobs, checked by the schema
    "engine.atomic",  # a file written whole or not at all (the TUI's remembered form)
    "engine.specs",
    "engine.generation.lengths",
    "engine.models.configs",
    "engine.models.token_layout",
}
HEAVY = ("torch", "diffusers", "transformers", "safetensors.torch", "torchvision")
# the layers, lowest first: each may import itself, the ones below it, and the client side
LAYERS = {
    "engine.models": {"engine.models"},
    "engine.weights": {"engine.models", "engine.weights", "engine.atomic"},
    "engine.generation": {"engine.models", "engine.weights", "engine.generation", "engine.atomic"},
    "engine.api": {"engine.models", "engine.weights", "engine.generation", "engine.api"},
    "engine.daemon": {
        "engine.models",
        "engine.weights",
        "engine.generation",
        "engine.daemon",
        "engine.atomic",
    },
    "engine.cli": {
        "engine.models",
        "engine.weights",
        "engine.generation",
        "engine.daemon",
        "engine.cli",
        "engine.atomic",
    },
}


def is_heavy(name: str) -> bool:
    return any(name == heavy or name.startswith(heavy + ".") for heavy in HEAVY)


def outside(target: str, allowed: set[str]) -> bool:
    """Whether `target` is none of the allowed modules or packages (`engine` alone means its __init__)."""
    if target in allowed:
        return False
    return not any(target.startswith(prefix + ".") for prefix in allowed if prefix != "engine")


def tui_violations(graph: ImportGraph) -> list[str]:
    """The TUI imports only the engine's client side, and nothing it runs (lazily or not) loads torch."""
    found = []
    for module in graph.modules("landiff_tui"):
        for name in sorted(graph.anywhere[module]):
            target = graph.resolve(name)
            if target and target.startswith("engine") and outside(target, CLIENT_SIDE):
                found.append(f"{module} imports {target}")
        heavy = sorted(n for n in graph.loads(module, lazy=True) if is_heavy(n))
        if heavy:
            found.append(f"{module} loads {', '.join(heavy)}")
    return found


def client_side_violations(graph: ImportGraph) -> list[str]:
    """The engine's client side stays torch-free and imports nothing of the layers above it."""
    found = []
    for module in sorted(CLIENT_SIDE & set(graph.anywhere)):
        for name in sorted(graph.anywhere[module]):
            target = graph.resolve(name)
            if target and outside(target, CLIENT_SIDE):
                found.append(f"{module} imports {target}")
        heavy = sorted(n for n in graph.loads(module, lazy=True) if is_heavy(n))
        if heavy:
            found.append(f"{module} loads {', '.join(heavy)}")
    return found


def layer_violations(graph: ImportGraph) -> list[str]:
    """engine.models imports no engine layer above it; no layer imports one above itself; nothing in the
    engine imports the TUI."""
    found = []
    for layer, allowed in LAYERS.items():
        for module in graph.modules(layer):
            for name in sorted(graph.anywhere[module]):
                target = graph.resolve(name)
                if target and outside(target, allowed | CLIENT_SIDE):
                    found.append(f"{module} imports {target}")
    return found


def startup_violations(graph: ImportGraph) -> list[str]:
    """Importing any daemon or CLI module loads no torch: the engine answers before the models' code loads
    (in the worker thread); the CLI's client commands stay quick."""
    found = []
    for module in graph.modules("engine.daemon") + graph.modules("engine.cli"):
        heavy = sorted(n for n in graph.loads(module) if is_heavy(n))
        if heavy:
            found.append(f"importing {module} loads {', '.join(heavy)}")
    return found


def circles(graph: ImportGraph) -> list[tuple[str, ...]]:
    """The groups of modules that import each other in a loop (lazy imports count), each sorted."""
    edges = {
        module: sorted({target for name in names if (target := graph.resolve(name)) and target != module})
        for module, names in graph.anywhere.items()
    }
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[tuple[str, ...]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in edges.get(module, ()):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(tuple(sorted(group)))

    for module in sorted(edges):
        if module not in order:
            visit(module)
    return sorted(found)


def circle_violations(graph: ImportGraph) -> list[str]:
    """No modules import each other in a loop, lazily or for types only: the layers are a ladder."""
    return [f"circle: {' <-> '.join(group)}" for group in circles(graph)]


RULES = [tui_violations, client_side_violations, layer_violations, startup_violations, circle_violations]


@pytest.fixture(scope="module")
def project() -> ImportGraph:
    return ImportGraph.read(ROOT, PACKAGES)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_project_keeps_its_layers(project, rule):
    assert rule(project) == []


BROKEN = {
    # each file breaks exactly one rule; the expected message names it
    "engine/__init__.py": "",
    "engine/wire.py": "",
    "engine/daemon/__init__.py": "",
    "engine/daemon/server.py": "from engine.daemon import worker\n",
    "engine/daemon/worker.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from engine.generation.pipeline import Pipeline  # type-only: fine
        def run():
            from engine.generation import pipeline  # lazy: fine
    """,
    "engine/daemon/service.py": "from engine.daemon.helpers import x\n",
    "engine/daemon/helpers.py": "import torch.nn\nx = 1\n",
    "engine/generation/__init__.py": "",
    "engine/generation/lengths.py": "from engine.generation import pipeline\n",
    "engine/generation/pipeline.py": "import torch\nfrom engine.daemon import store\n",
    "engine/daemon/store.py": "",
    "engine/models/__init__.py": "",
    "engine/models/llm.py": "import torch\nfrom engine.weights.loading import load\n",
    "engine/weights/__init__.py": "",
    "engine/weights/loading.py": "from engine.models import llm\n",
    "landiff_tui/__init__.py": "",
    "landiff_tui/app.py": "from engine.wire import X\n",
    "landiff_tui/views.py": "def later():\n    from engine.daemon.server import serve\n",
    "landiff_tui/preview.py": "from engine.generation.lengths import plan\n",
}
EXPECTED = {
    "tui_violations": [
        "landiff_tui.preview loads torch",  # through lengths -> pipeline
        "landiff_tui.views imports engine.daemon.server",
    ],
    "client_side_violations": ["engine.generation.lengths imports engine.generation.pipeline"],
    "layer_violations": [
        "engine.generation.pipeline imports engine.daemon.store",
        "engine.models.llm imports engine.weights.loading",
    ],
    "startup_violations": ["importing engine.daemon.service loads torch.nn"],
    "circle_violations": ["circle: engine.models.llm <-> engine.weights.loading"],
}


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_each_rule_finds_a_violation(tmp_path, rule):
    for name, text in BROKEN.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    found = rule(ImportGraph.read(tmp_path, PACKAGES))
    for expected in EXPECTED[rule.__name__]:
        assert any(expected in line for line in found), (expected, found)
    assert found, f"{rule.__name__} found nothing in a project that breaks it"


def test_the_running_imports_agree_with_the_graph():
    """The graph is read from source; this runs the imports for real, so a gap in the reader shows."""
    modules = [m for m in ImportGraph.read(ROOT, PACKAGES).modules("engine.daemon")] + [
        "engine.cli.main",
        "engine.cli.client_commands",
        "landiff_tui.app",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(' '.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=WAIT_S
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing the daemon, the CLI and the TUI loaded: {result.stdout}"


MODEL_NAME_TEST = re.compile(r"""(==|!=)\s*["'](tiny|landiff)["']|["'](tiny|landiff)["']\s*(==|!=)""")


def test_what_differs_between_models_is_read_from_their_specs_not_their_names():
    """A model's name is compared nowhere: what differs (random weights, the weights' folder) is a field of
    its ModelSpec, so a new spec is one entry in engine/specs.py."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if MODEL_NAME_TEST.search(line)
    ]
    assert found == []
