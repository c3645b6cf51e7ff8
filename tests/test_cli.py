"""`landiff-engine` end to end on the tiny model, in a subprocess as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli.main import main
from engine.generation.stage1 import SemanticStage
from engine.specs import get_spec
from engine.weights.layout import ReleaseLayout, layout_for
from engine.weights.tiny import ensure_tiny_release
from tests.harness import PROMPT, WAIT_S


def engine_cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LANDIFF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "engine.cli", *args]
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=WAIT_S)


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    assert ensure_tiny_release(layout_for("tiny", home), get_spec("tiny"))
    assert not ensure_tiny_release(layout_for("tiny", home), get_spec("tiny"))
    return home


def test_tokens_writes_codes_and_features(tiny_home, tmp_path):
    out, features = tmp_path / "codes.npy", tmp_path / "features.npy"
    args = [
        "tokens",
        PROMPT,
        "--model",
        "tiny",
        "--seed",
        "5",
        "--out",
        str(out),
        "--features",
        str(features),
    ]
    result = engine_cli(*args, home=tiny_home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    spec = get_spec("tiny")
    codes = np.load(out)
    assert codes.dtype == np.int64 and codes.shape == (5 + 2 * 3,)
    assert codes.min() >= 0 and codes.max() < spec.llm.codebook_size
    decoded = np.load(features)
    assert decoded.shape == (3, 16, 4, 6) and np.isfinite(decoded).all()
    again = engine_cli(*args, home=tiny_home, cwd=tmp_path)
    assert again.returncode == 0 and np.array_equal(np.load(out), codes)
    assert not list(tmp_path.glob("*.partial"))


def run_in_process(args: list[str], home: Path, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("LANDIFF_HOME", str(home))
    monkeypatch.chdir(cwd)
    status = main(args)
    return status, capsys.readouterr().err


def test_default_output_name_and_two_segments(tiny_home, tmp_path, monkeypatch, capsys):
    args = ["tokens", PROMPT, "--model", "tiny", "--frames", "17"]  # two chunks: two token segments
    status, err = run_in_process(args, tiny_home, tmp_path, monkeypatch, capsys)
    assert status == 0, err
    assert np.load(tmp_path / "results" / "a-snail-crawling-on-green-moss-s42.npy").shape == (22,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfg", "-1"], "cfg must be between 0 and 50, got -1"),
        (["--temperature", "0"], "temperature must be > 0 and <= 10, got 0"),
        (["--top-p", "1.5"], "top_p must be > 0 and <= 1, got 1.5"),
        (["--top-k", "0"], "top_k must be >= 1, got 0"),
        (["--top-k", "2.5"], "top_k must be a whole number, not '2.5'"),
        (["--frames", "100000"], "longer than the tiny model can make"),
        (["--overlap", "2"], "overlap must leave an even number"),
        (["--model", "huge"], "unknown model 'huge'"),
        (["--device", "cuda:7"], "--device"),
    ],
)
def test_user_mistakes_get_one_clear_line(tiny_home, tmp_path, monkeypatch, capsys, args, message):
    status, err = run_in_process(
        ["tokens", PROMPT, "--model", "tiny", *args], tiny_home, tmp_path, monkeypatch, capsys
    )
    assert status == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_empty_prompt_and_missing_release_weights(tiny_home, tmp_path, monkeypatch, capsys):
    status, err = run_in_process(
        ["tokens", "  ", "--model", "tiny"], tiny_home, tmp_path, monkeypatch, capsys
    )
    assert status == 2 and "prompt must not be empty" in err
    missing = engine_cli("tokens", PROMPT, "--device", "cpu", home=tmp_path / "empty", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "flan-t5-xxl" in missing.stderr and "Re-download" in missing.stderr


def test_stage_decodes_each_segment(tiny_home):
    from engine.models.llm_sampler import SamplingParams

    stage = SemanticStage.load(get_spec("tiny"), layout_for("tiny", tiny_home))
    codes = stage.codes(PROMPT, SamplingParams(num_frames=6, seed=3))
    features = stage.features(codes, 6)
    assert features.shape == (6, 16, 4, 6)
    first = stage.features(codes[: codes.numel() // 2], 3)
    assert np.allclose(features[:3].numpy(), first.numpy())
    with pytest.raises(ValueError, match="do not make"):
        stage.features(codes[:-1], 6)


def test_tui_entry_point_needs_a_terminal_and_says_what_to_use_instead():
    command = [sys.executable, "-m", "landiff_tui.app"]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=WAIT_S)
    assert (
        result.returncode == 2 and "needs a terminal" in result.stderr and "landiff-engine" in result.stderr
    )
    usage = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=WAIT_S)
    assert usage.returncode == 0 and "--model" in usage.stdout


def test_layout_paths_are_the_release_tree(tmp_path):
    layout = ReleaseLayout(tmp_path)
    assert layout.llm_file == tmp_path / "LanDiff" / "llm" / "model.safetensors"
    assert layout.tokenizer_file == tmp_path / "LanDiff" / "tokenizer" / "model.safetensors"
    assert layout_for("landiff", tmp_path).root == tmp_path
    assert layout_for("tiny", tmp_path).root == tmp_path / "tiny"


def test_serve_reports_its_options_but_the_model_with_the_weights_root_absolute(tmp_path, monkeypatch):
    from engine.cli.main import serve_command_options

    monkeypatch.chdir(tmp_path)
    given = ["serve", "--model", "tiny", "--gpus", "cpu:2", "--ckpts", "w", "--llm-device=cpu", "--model=x"]
    kept = ["--gpus", "cpu:2", "--ckpts", str(tmp_path / "w"), "--llm-device=cpu"]
    assert serve_command_options(given) == kept
