"""`landiff-engine generate` and the pipeline on the tiny model: outputs, reproducibility, cancellation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli.main import main
from engine.generation.job import JobCancelled, JobSpec
from engine.generation.video import read_mp4
from engine.specs import get_spec
from engine.weights.checkpoints import CheckpointError
from engine.weights.layout import layout_for
from engine.weights.loading import load_control_dit, load_vae
from engine.weights.tiny import ensure_tiny_release

PROMPT = "A red fox running through a snowy forest."
TINY = get_spec("tiny")


def test_generate_writes_a_playable_video_its_tokens_and_record(home, tmp_path):
    out = tmp_path / "videos" / "fox.mp4"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LANDIFF_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "engine.cli",
        "generate",
        PROMPT,
        "--model",
        "tiny",
        "--ckpts",
        str(home),
    ]
    result = subprocess.run(
        [*command, "--out", str(out), "--steps", "6", "--seed", "3", "--quality"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    frames, fps = read_mp4(out)
    assert frames.shape == (TINY.video_frames(3), 64, 96, 3) and fps == TINY.fps
    tokens = np.load(out.with_suffix(".npy"))
    assert tokens.shape == (11,) and tokens.dtype == np.int64
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["job"]["prompt"] == PROMPT and record["job"]["seed"] == 3 and record["job"]["steps"] == 6
    assert set(record["timings"]) == {"text", "tokens", "denoise", "decode", "write"}
    assert record["peak_memory_bytes"] > 0 and record["video"]["frames"] == frames.shape[0]
    assert "LanDiff/diffusion/1/mp_rank_00_model_states.pt" in record["weights_sha256"]
    assert all(len(digest) == 64 for digest in record["weights_sha256"].values())
    assert sorted(p.name for p in out.parent.iterdir()) == ["fox.json", "fox.mp4", "fox.npy", "fox.png"]
    # --quality: measured as the engine's probe measures a job, into the record, and said
    quality = record["quality"]
    assert quality["frames"] == frames.shape[0] and quality["error"] is None and quality["flicker"] >= 0
    assert quality["clip"]["model"] == "random tiny CLIP in the layout of openai/clip-vit-base-patch32"
    assert f"CLIP score: mean {quality['clip']['mean']:.2f}" in result.stderr


def test_saved_tokens_and_seed_reproduce_the_frames(pipeline, tmp_path):
    first = pipeline.run(JobSpec(PROMPT, tmp_path / "a.mp4", seed=5, steps=4))
    again = pipeline.run(JobSpec(PROMPT, tmp_path / "b.mp4", seed=5, steps=4, tokens=first.tokens))
    assert np.array_equal(read_mp4(first.video)[0], read_mp4(again.video)[0])
    assert np.array_equal(np.load(first.tokens), np.load(again.tokens))
    assert "tokens" not in again.timings_s  # stage 1 was skipped
    other = pipeline.run(JobSpec(PROMPT, tmp_path / "c.mp4", seed=6, steps=4, tokens=first.tokens))
    assert not np.array_equal(read_mp4(first.video)[0], read_mp4(other.video)[0])


def test_progress_events_cover_every_stage(pipeline, tmp_path):
    events = []
    pipeline.run(JobSpec(PROMPT, tmp_path / "p.mp4", steps=3), on_progress=events.append)
    stages = [event.stage for event in events]
    assert stages.index("text") < stages.index("tokens") < stages.index("denoise") < stages.index("decode")
    assert stages.index("decode") < stages.index("write")
    denoise = [event for event in events if event.stage == "denoise"]
    assert [(e.step, e.total) for e in denoise] == [(1, 3), (2, 3), (3, 3)]
    assert denoise[-1].eta_s == 0 and all(e.rate > 0 for e in denoise)


@pytest.mark.parametrize("stage", ["tokens", "denoise"])
def test_a_cancelled_job_leaves_nothing_behind(pipeline, tmp_path, stage):
    seen = []

    def should_stop() -> bool:
        return any(event.stage == stage and event.step >= 2 for event in seen)

    with pytest.raises(JobCancelled):
        pipeline.run(
            JobSpec(PROMPT, tmp_path / "x.mp4", steps=5), on_progress=seen.append, should_stop=should_stop
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps must be between 1 and 1000"),
        (["--out", "video.avi"], "--out must name an .mp4 file"),
        (["--tokens", "missing.npy"], "--tokens missing.npy does not exist"),
        (["--cfg", "-2"], "cfg must be between 0 and 50, got -2"),
        (["--temperature", "0"], "temperature must be > 0 and <= 10, got 0"),
    ],
)
def test_user_mistakes_are_one_line(home, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    status = main(["generate", PROMPT, "--model", "tiny", "--ckpts", str(home), *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_tokens_of_the_wrong_length_are_refused(pipeline, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="whole segments of 11 semantic tokens"):
        pipeline.run(JobSpec(PROMPT, tmp_path / "v.mp4", tokens=bad))
    assert not (tmp_path / "v.mp4").exists()


def test_broken_stage2_checkpoints_name_the_file(home, tmp_path):
    layout = layout_for("tiny", tmp_path)
    ensure_tiny_release(layout, TINY)
    (layout.control_file.parents[1] / "latest").unlink()
    with pytest.raises(CheckpointError, match="diffusion/latest is missing"):
        load_control_dit(layout, TINY.dit, device="cpu", dtype=torch.float32)
    (layout.control_file.parents[1] / "latest").write_text("1")
    content = torch.load(layout.control_file, weights_only=True)
    del content["module"]["model.control_model.diffusion_model.mixins.adaln_layer.zero_linears.0.weight"]
    torch.save(content, layout.control_file)
    with pytest.raises(CheckpointError) as error:
        load_control_dit(layout, TINY.dit, device="cpu", dtype=torch.float32)
    assert "zero_linears.0.weight" in str(error.value) and str(layout.control_file) in str(error.value)
    torch.save(
        {"state_dict": {"decoder.conv_in.conv.weight": torch.zeros(1)}, "args": object()}, layout.vae_file
    )
    with pytest.raises(CheckpointError, match="3d-vae.pt does not fit the model: .*wrong shape"):
        load_vae(layout, TINY.vae, device="cpu", dtype=torch.float32)  # `args` is skipped; the tensor is not
    layout.vae_file.write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_vae(layout, TINY.vae, device="cpu", dtype=torch.float32)


def test_memory_profiles():
    from engine.generation.memory import resolve_memory_profile

    assert resolve_memory_profile("auto", torch.device("cpu")).profile == "resident"  # no GPU memory to save
    assert resolve_memory_profile("offload", torch.device("cpu")).profile == "balanced"  # the former name
    with pytest.raises(ValueError, match="must be one of auto, resident, balanced, low, offload"):
        resolve_memory_profile("everything", torch.device("cpu"))


def test_stage2_decodes_with_the_tokenizer_copy_in_the_diffusion_file(home, tmp_path):
    from engine.weights.loading import VQ_COPY_PREFIX, load_diffusion_semantic_decoder, load_semantic_decoder

    layout = layout_for("tiny", home)
    from_copy = load_diffusion_semantic_decoder(layout, TINY.decoder, device="cpu", dtype=torch.float32)
    from_tokenizer = load_semantic_decoder(
        layout.tokenizer_file, TINY.decoder, device="cpu", dtype=torch.float32
    )
    module = torch.load(layout.control_file, weights_only=True)["module"]
    copy_embed = module[VQ_COPY_PREFIX + "quantizer._codebook.embed"]
    assert torch.equal(from_copy.quantizer._codebook.embed, copy_embed)
    assert not torch.equal(from_tokenizer.quantizer._codebook.embed, copy_embed)
    other = layout_for("tiny", tmp_path)
    ensure_tiny_release(other, TINY)
    content = torch.load(other.control_file, weights_only=True)
    content["module"] = {k: v for k, v in content["module"].items() if not k.startswith(VQ_COPY_PREFIX)}
    torch.save(content, other.control_file)
    fallback = load_diffusion_semantic_decoder(other, TINY.decoder, device="cpu", dtype=torch.float32)
    expected = load_semantic_decoder(other.tokenizer_file, TINY.decoder, device="cpu", dtype=torch.float32)
    assert torch.equal(fallback.quantizer._codebook.embed, expected.quantizer._codebook.embed)
