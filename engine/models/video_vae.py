"""The CogVideoX 3D VAE decoder (diffusers' AutoencoderKLCogVideoX), used decode-only.

Latents [B, T, C, H, W] in the DiT layout are divided by the scale factor and decoded in
the reference's temporal chunks (the first three latent frames, then two at a time, with
causal-conv caches carried between chunks: diffusers' own frame batching, tiling off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLCogVideoX

SCALE_FACTOR = 1.15258426


@dataclass(frozen=True)
class VAEConfig:
    """Defaults are the release: channels 128 x (1, 2, 2, 4), 3 resnets per level, 16 latent channels."""

    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    res_blocks: int = 3
    latent_channels: int = 16
    scale_factor: float = SCALE_FACTOR

    @property
    def levels(self) -> int:
        return len(self.channel_multipliers)


def build_vae(config: VAEConfig) -> AutoencoderKLCogVideoX:
    """The diffusers VAE with its encoder removed: only decoding is ever needed."""
    levels = config.levels
    vae = AutoencoderKLCogVideoX(
        block_out_channels=tuple(config.base_channels * m for m in config.channel_multipliers),
        down_block_types=("CogVideoXDownBlock3D",) * levels,
        up_block_types=("CogVideoXUpBlock3D",) * levels,
        layers_per_block=config.res_blocks,
        latent_channels=config.latent_channels,
        norm_num_groups=32,
        scaling_factor=config.scale_factor,
    )
    del vae.encoder
    vae.disable_tiling()
    vae.disable_slicing()
    return vae


def decode_latents(
    vae: AutoencoderKLCogVideoX, latents: torch.Tensor, scale_factor: float = SCALE_FACTOR
) -> torch.Tensor:
    """[B, T, C, H, W] latents -> video [B, 3, frames, height, width] in about [-1, 1] (float32)."""
    dtype = vae.decoder.conv_in.conv.weight.dtype
    z = (latents.to(dtype) / scale_factor).permute(0, 2, 1, 3, 4).contiguous()
    return vae.decode(z).sample.float()


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating like the reference."""
    frames = ((video + 1) / 2).clamp(0, 1) * 255
    return frames.permute(1, 2, 3, 0).to(torch.uint8)
