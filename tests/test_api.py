"""The Python API (`engine.api.LanDiff`) on the tiny model, and the README's example run as written."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from engine.api import JobCancelled, LanDiff
from engine.generation.job import JobSpec
from engine.specs import get_spec
from tests.harness import ROOT, WAIT_S

TINY = get_spec("tiny")
PROMPT = "A red kite over a windy beach at dusk."


@pytest.fixture(scope="module")
def landiff(home):
    return LanDiff.from_pretrained(home, model="tiny", device="cpu")


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_on_the_tiny_model(home, tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 6 and 'model="tiny"' in code
    env = {**os.environ, "LANDIFF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT_S
    )
    assert result.returncode == 0, result.stderr
    assert f"({TINY.video_frames(3)}, 64, 96, 3) (11,)" in result.stdout
    assert list(tmp_path.iterdir()) == []  # without `out`, nothing is left on disk


def test_a_call_returns_the_frames_and_tokens_the_engine_pipeline_writes(landiff, pipeline, tmp_path):
    seen = []
    video = landiff(PROMPT, seed=5, steps=2, on_progress=lambda report: seen.append(report.stage))
    assert video.frames.dtype == np.uint8 and video.frames.shape == (TINY.video_frames(3), 64, 96, 3)
    assert video.fps == TINY.fps and video.video_path is None
    assert video.record["job"]["seed"] == 5 and video.record["model"] == "tiny"
    assert {"text", "tokens", "denoise", "decode", "write"} <= set(seen)
    engine_job = pipeline.run(JobSpec(prompt=PROMPT, out=tmp_path / "engine.mp4", seed=5, steps=2))
    assert np.array_equal(np.load(engine_job.tokens), video.tokens)
    again = landiff(PROMPT, seed=5, steps=2, tokens=None)
    assert np.array_equal(again.frames, video.frames)


def test_out_keeps_the_engines_files_and_saved_tokens_rerender(landiff, tmp_path):
    first = landiff(PROMPT, seed=1, steps=2, out=tmp_path / "kite.mp4")
    assert first.video_path == tmp_path / "kite.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kite.json", "kite.mp4", "kite.npy", "kite.png"]
    rerendered = landiff(PROMPT, seed=1, steps=2, tokens=tmp_path / "kite.npy")
    assert np.array_equal(rerendered.frames, first.frames)


def test_should_stop_cancels_and_unknown_parameters_are_named(landiff):
    with pytest.raises(JobCancelled):
        landiff(PROMPT, steps=50, should_stop=lambda: True)
    with pytest.raises(TypeError, match="unknown parameter.*sede.*known: .*seed"):
        landiff(PROMPT, sede=3)


def test_a_call_with_quality_measures_the_video_as_the_engine_does(landiff, tmp_path):
    video = landiff(PROMPT, seed=5, steps=2, out=tmp_path / "v.mp4", quality=True)
    quality = video.record["quality"]
    assert quality["frames"] == len(video.frames) and quality["error"] is None
    assert math.isfinite(quality["clip"]["mean"]) and quality["clip"]["model"].startswith("random tiny CLIP")
    assert json.loads((tmp_path / "v.json").read_text())["quality"] == quality
    assert "quality" not in landiff(PROMPT, seed=5, steps=2).record  # only when asked
