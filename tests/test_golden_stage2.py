"""Stage-2 parity with the reference's diffusion golden cases: the control-branch network call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.models.control_dit import ControlDiT
from engine.models.dpm_sampler import DpmSolverSampler
from engine.models.semantic_decoder import SemanticDecoder
from engine.models.video_vae import build_vae, decode_latents
from engine.weights.sat_keys import convert_dit, convert_vae_decoder

from .golden import (
    assert_close_relative,
    decoder_config,
    dit_config,
    golden_cases,
    load_pt,
    read_config,
    vae_config,
)

pytestmark = pytest.mark.golden

MAIN = "model.main_model.diffusion_model."
CONTROL = "model.control_model.diffusion_model."
VQ_COPY = CONTROL + "semantic_conditioner.semantic_model.model."


def strip(tensors: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def build_case(case: Path) -> tuple[ControlDiT, SemanticDecoder, dict]:
    config = read_config(case)
    tensors = load_file(str(case / "model.safetensors"))
    main, unknown_main = convert_dit(strip(tensors, MAIN), "main")
    control, unknown_control = convert_dit(strip(tensors, CONTROL), "control")
    assert unknown_main == [] and unknown_control == []
    network = ControlDiT(dit_config(config)).eval()
    network.load_state_dict({**main, **control}, strict=True)
    decoder = SemanticDecoder(decoder_config(config["tokenizer_knobs"])).eval()
    wanted = decoder.state_dict().keys()
    decoder.load_state_dict({k: v for k, v in strip(tensors, VQ_COPY).items() if k in wanted}, strict=True)
    return network, decoder, config


@pytest.mark.parametrize("case", golden_cases("diffusion_"))
def test_network_call_with_control_outputs(case: Path):
    if not (case / "dit_call.pt").is_file():
        pytest.skip(f"{case.name} has no dit_call.pt")
    network, decoder, config = build_case(case)
    inputs, call = load_pt(case, "input.pt"), load_pt(case, "dit_call.pt")
    latents, _, context = call["args"]
    timesteps = call["kwargs"]["idx"]
    with torch.no_grad():
        features = decoder(
            inputs["semantic_token"].reshape(1, -1), config["tokenizer_knobs"]["temporal_size"]
        )
        semantic = network.semantic_conditioner(features)
        assert_close_relative(semantic, call["semantic_feature"], 1e-5, "semantic condition")
        controls = network.control_outputs(latents, context["crossattn"], timesteps, semantic)
        assert len(controls) == len(call["control_layers_output"])
        for index, (ours, theirs) in enumerate(zip(controls, call["control_layers_output"], strict=True)):
            assert_close_relative(ours, theirs["hidden_states"], 1e-5, f"control layer {index}")
        output = network(latents, context["crossattn"], timesteps, semantic)
    assert_close_relative(output, call["output"], 1e-5, "network output (v)")


@pytest.mark.parametrize("case", golden_cases("diffusion_"))
def test_sampler_replays_the_recorded_noise(case: Path):
    if not (case / "sampler.pt").is_file():
        pytest.skip(f"{case.name} has no sampler.pt")
    network, decoder, config = build_case(case)
    inputs, recorded = load_pt(case, "input.pt"), load_pt(case, "sampler.pt")
    steps = config["knobs"]["sampler_steps"]
    draws = iter(recorded["randn_like_draws"])
    seen = []
    with torch.no_grad():
        features = decoder(
            inputs["semantic_token"].reshape(1, -1), config["tokenizer_knobs"]["temporal_size"]
        )
        semantic = network.semantic_conditioner(features)
        text = torch.cat([inputs["uc"]["crossattn"], inputs["c"]["crossattn"]])  # [uncond, cond]

        def run_network(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            call = recorded["calls"][len(seen)]
            assert_close_relative(latents, call["args"][0], 1e-5, f"network input {len(seen)}")
            assert timesteps.tolist() == call["kwargs"]["idx"].tolist()
            seen.append(timesteps)
            return network(latents, text, timesteps, semantic)

        samples = DpmSolverSampler().sample(
            run_network, recorded["init_noise"][0], steps, draw_noise=lambda like: next(draws)
        )
    assert len(seen) == len(recorded["calls"]) == steps
    assert next(draws, None) is None, "every recorded noise draw is used, in order"
    assert_close_relative(samples, recorded["samples_z"], 1e-5, "final latents")


@pytest.mark.parametrize("case", golden_cases("diffusion_"))
def test_vae_decode(case: Path):
    if not (case / "vae_decode.pt").is_file():
        pytest.skip(
            f"{case.name} has no vae_decode.pt (the reference's chunked decode is undefined for its sizes)"
        )
    config = read_config(case)
    vae = build_vae(vae_config(config)).eval()
    tensors = strip(load_file(str(case / "model.safetensors")), "first_stage_model.")
    vae.load_state_dict(convert_vae_decoder(tensors, vae_config(config).levels), strict=True)
    recorded = load_pt(case, "vae_decode.pt")
    latents = recorded["latent_in"].permute(0, 2, 1, 3, 4)  # recorded as [B, C, T, H, W], unscaled
    with torch.no_grad():
        video = decode_latents(vae, latents)
        assert_close_relative(video, recorded["recon"], 1e-5, "decoded video")
        assert_close_relative(((video + 1) / 2).clamp(0, 1), recorded["video"], 1e-5, "video in [0, 1]")
        random = decode_latents(vae, recorded["rand_latent"].permute(0, 2, 1, 3, 4))
    assert_close_relative(random, recorded["rand_recon"], 1e-5, "decoded random latent")
