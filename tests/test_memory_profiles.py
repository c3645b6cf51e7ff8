"""Memory profiles on the CPU with the tiny model: balanced gives resident's frames, low (8-bit streamed
blocks, tiled VAE) differs a little and says so in its sidecar; the tiled VAE streams like the untiled one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.generation.job import JobSpec
from engine.generation.memory import WeightSizes, resolve_memory_profile
from engine.generation.pipeline import Pipeline
from engine.models.configs import VAEConfig
from engine.models.video_vae import StreamingDecoder, blend_ramp, build_vae, tile_ranges
from engine.specs import get_spec
from engine.weights.layout import layout_for

PROMPT = "A red fox running through a snowy forest."
GiB = 2**30


def run(home, tmp_path, profile: str):
    spec = get_spec("tiny")
    pipeline = Pipeline(spec, layout_for("tiny", home), device=torch.device("cpu"), memory=profile)
    chunks = []
    result = pipeline.run(
        JobSpec(PROMPT, tmp_path / f"{profile}.mp4", seed=3, steps=3), on_chunk=chunks.append
    )
    frames = np.concatenate([chunk.frames for chunk in chunks])
    return pipeline, frames, json.loads(result.sidecar.read_text())


def test_profiles_on_the_cpu(home, tmp_path):
    _, resident, record = run(home, tmp_path, "resident")
    assert record["memory"]["profile"] == "resident" and not record["memory"]["vae_spatial_tiling"]
    assert record["dit"] == {
        "attention": "sdpa",
        "compile": False,
        "fuse_qkv": False,
        "chosen_because": "auto: sdpa, the cpu device has no other kernel",
    }

    pipeline, balanced, record = run(home, tmp_path, "balanced")
    assert np.array_equal(balanced, resident)
    assert record["memory"]["profile"] == "balanced"
    residency, stage1, stage2 = pipeline.residency, pipeline._stage1, pipeline._stage2
    # after the job the encoders and the language model are back on their host copies; the DiT stays
    assert not residency.entries[id(stage1.prompt_encoder.model)].on_device
    assert not residency.entries[id(stage1.lm)].on_device
    assert not residency.entries[id(stage2.prompt_encoder.model)].on_device
    assert residency.entries[id(stage2.network)].on_device

    pipeline, low, record = run(home, tmp_path, "low")
    memory = record["memory"]
    assert memory["profile"] == "low" and memory["dit_blocks_streamed"] and memory["dit_weights_8bit"]
    assert memory["vae_spatial_tiling"]
    assert low.shape == resident.shape
    difference = np.abs(low.astype(int) - resident.astype(int))
    print(f"low vs resident on the CPU: mean |diff| {difference.mean():.2f}, max {difference.max()} of 255")
    assert 0 < difference.mean() < 40  # lossy, but the same video


def test_offload_is_balanced_and_auto_says_why():
    choice = resolve_memory_profile("offload", torch.device("cpu"))
    assert choice.profile == "balanced" and "former name" in choice.reason
    sizes = WeightSizes(total=27 * GiB, balanced_peak=20 * GiB)
    cuda = torch.device("cuda")
    for free, wanted in ((80 * GiB, "resident"), (30 * GiB, "balanced"), (16 * GiB, "low")):
        choice = resolve_memory_profile("auto", cuda, sizes, free_bytes=free)
        assert choice.profile == wanted
        assert choice.reason.startswith(f"auto picked {wanted}: {free / GiB:.1f} GiB free")


def test_release_sizes_are_counted_without_allocating():
    from engine.generation.memory import spec_weight_sizes

    sizes = spec_weight_sizes(get_spec("landiff"), torch.bfloat16)
    assert 20 * GiB < sizes.total < 40 * GiB  # two T5-XXL encoders, the LM, the DiT and the VAE
    assert sizes.balanced_peak < sizes.total


def test_tiles_cover_and_blend_to_one():
    ranges = tile_ranges(60)
    assert ranges[0][0] == 0 and ranges[-1][1] == 60 and ranges[0][1] > ranges[1][0]
    total = torch.zeros(60 * 8)
    for index, (start, end) in enumerate(ranges):
        total[start * 8 : end * 8] += blend_ramp(ranges, index, 8)
    assert torch.allclose(total, torch.ones_like(total))


@pytest.mark.parametrize("tiled", [False, True])
def test_tiled_streaming_decode_continues_like_one_decode(tiled):
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(base_channels=32, res_blocks=1)).eval()
    latents = torch.randn(1, 3 + 2, 16, 8, 8)
    with torch.no_grad():
        whole = StreamingDecoder(vae, tiled=tiled).decode(latents)
        decoder = StreamingDecoder(vae, tiled=tiled)
        pieces = torch.cat([decoder.decode(latents[:, :3]), decoder.decode(latents[:, 3:])], dim=2)
        untiled = StreamingDecoder(vae).decode(latents)
    assert torch.equal(pieces, whole)
    assert torch.equal(whole, untiled) != tiled  # tiling changes the pixels, and only tiling does
