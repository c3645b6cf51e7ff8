"""Full-size stage-2 checkpoints: the release's SAT key listings map exactly onto our modules."""

from __future__ import annotations

import torch

from engine.models.configs import DiTConfig, VAEConfig
from engine.models.control_dit import ControlDiT
from engine.models.video_vae import build_vae
from engine.weights.checkpoints import expected_shapes
from engine.weights.loading import is_main_dit_key
from engine.weights.sat_keys import convert_dit, convert_vae_decoder, sat_dit_from_ours

from .refkeys import refkeys_or_skip


def meta_tensors(listing: dict[str, list[int]], prefix: str) -> dict[str, torch.Tensor]:
    return {
        key[len(prefix) :]: torch.empty(shape, device="meta")
        for key, shape in listing.items()
        if key.startswith(prefix)
    }


def shapes(tensors: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in tensors.items()}


def full_size_network() -> ControlDiT:
    with torch.device("meta"):
        return ControlDiT(DiTConfig())


def test_cogvideox_2b_file_fills_the_main_transformer():
    listing = refkeys_or_skip("cogvideox2b_transformer_module.txt")
    converted, unknown = convert_dit(meta_tensors(listing, "model.diffusion_model."), "main")
    assert unknown == []
    expected = {k: list(v) for k, v in expected_shapes(full_size_network()).items() if is_main_dit_key(k)}
    assert shapes(converted) == expected


def test_diffusion_file_fills_the_control_branch_and_conditioner():
    listing = refkeys_or_skip("diffusion_control_model_only.txt")
    converted, unknown = convert_dit(meta_tensors(listing, "model.control_model.diffusion_model."), "control")
    assert unknown == []
    expected = {k: list(v) for k, v in expected_shapes(full_size_network()).items() if not is_main_dit_key(k)}
    assert shapes(converted) == expected


def test_sat_conversion_round_trips():
    listing = refkeys_or_skip("cogvideox2b_transformer_module.txt")
    sat = {k: v for k, v in meta_tensors(listing, "model.diffusion_model.").items() if "pos_embed" not in k}
    ours, _ = convert_dit(sat, "main")
    assert shapes(sat_dit_from_ours(ours, "main")) == shapes(sat)


def test_vae_file_fills_the_decoder():
    listing = refkeys_or_skip("vae_3d-vae.pt.txt")
    converted = convert_vae_decoder(meta_tensors(listing, ""), VAEConfig().levels)
    with torch.device("meta"):
        vae = build_vae(VAEConfig())
    assert shapes(converted) == {k: list(v) for k, v in expected_shapes(vae).items()}
