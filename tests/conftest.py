"""Fixtures shared by the modules that run the tiny pipeline in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The engines the tests start measure no finished job by themselves: a quality probe after every tiny job
# would take CPU from the next test on a 2-core machine. tests/test_quality.py turns it on for its engine.
os.environ.setdefault("LANDIFF_QUALITY_PROBE", "off")


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
def pipeline(home):
    """The tiny pipeline on the CPU, loaded once per module."""
    import torch

    from engine.generation.pipeline import Pipeline
    from engine.specs import get_spec
    from engine.weights.layout import layout_for

    return Pipeline(get_spec("tiny"), layout_for("tiny", home), device=torch.device("cpu"))
