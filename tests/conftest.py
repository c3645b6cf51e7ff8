"""Fixtures shared by the modules that run the tiny pipeline in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness import ENGINE_LEAVES_S, SHORT_DIRS, TEST_LIMIT_S, RunningEngine, wait_until

# The engines the tests start measure no finished job by themselves: a quality probe after every tiny job
# would take CPU from the next test on a 2-core machine. tests/test_quality.py turns it on for its engine.
os.environ.setdefault("LANDIFF_QUALITY_PROBE", "off")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets the one time limit (pytest-timeout: set-up, call and tear-down), unless it names
    its own: a hang fails the test that hangs instead of stalling the run."""
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_LIMIT_S))


@pytest.fixture(scope="session", autouse=True)
def remove_short_dirs():
    """The short socket dirs (harness.short_dir) this test process made go with its session."""
    yield
    import shutil

    for path in SHORT_DIRS:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A weights root holding the tiny model's random weights in the release layout."""
    from engine.specs import get_spec
    from engine.weights.layout import layout_for
    from engine.weights.tiny import ensure_tiny_release

    root = tmp_path_factory.mktemp("weights")
    ensure_tiny_release(layout_for("tiny", root), get_spec("tiny"))
    return root


@pytest.fixture(scope="module")
def weights(home) -> Path:
    """The tiny weights root (`home`) that the engines of a module serve from."""
    return home


@pytest.fixture(scope="module")
def pipeline(home):
    """The tiny pipeline on the CPU, loaded once per module."""
    import torch

    from engine.generation.pipeline import Pipeline
    from engine.specs import get_spec
    from engine.weights.layout import layout_for

    return Pipeline(get_spec("tiny"), layout_for("tiny", home), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """The tiny model as the two hub repos hold it, and the bundle's checksum list (for tests/fake_hub)."""
    import hashlib

    from engine.specs import get_spec
    from engine.weights.layout import FLAN_T5_REPO, RELEASE_REPO, ReleaseLayout
    from engine.weights.tiny import write_t5_folder, write_tiny_release

    tiny = get_spec("tiny")
    source = tmp_path_factory.mktemp("source")
    layout = ReleaseLayout(source)
    write_tiny_release(layout, tiny)
    write_t5_folder(source / "flan-sharded", tiny.flan_t5, seed=0, sharded=True)
    bundle = {
        str(p.relative_to(layout.bundle)): p.read_bytes() for p in layout.bundle.rglob("*") if p.is_file()
    }
    flan_dir = source / "flan-sharded"
    flan = {p.name: p.read_bytes() for p in flan_dir.iterdir() if p.is_file()}
    checksums = {path: hashlib.md5(content).hexdigest() for path, content in bundle.items()}
    return {RELEASE_REPO: bundle, FLAN_T5_REPO: flan}, checksums


@pytest.fixture
def no_engine(tmp_path, home):
    """Runtime and data dirs where no engine runs yet; stops whatever the test started."""
    running = RunningEngine(tmp_path / "engine", home)
    yield running
    running.cli("stop")
    wait_until(lambda: not running.socket.exists(), "the engine to leave", ENGINE_LEAVES_S)
