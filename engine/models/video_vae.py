"""The CogVideoX 3D VAE decoder (diffusers' AutoencoderKLCogVideoX), used decode-only.

Latents [B, T, C, H, W] in the DiT layout are divided by the scale factor and decoded in
the reference's temporal chunks (the first three latent frames, then two at a time, with
causal-conv caches carried between chunks: diffusers' own frame batching, tiling off).
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from engine.models.configs import SCALE_FACTOR, VAEConfig


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
        temporal_compression_ratio=config.temporal_compression,
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


class StreamingDecoder:
    """Decodes a video's latents piece by piece as they are made, carrying the causal convs' state.

    The first piece is split like diffusers' `_decode` (an odd first batch, then pairs); every later
    piece must hold an even number of latent frames, decoded in pairs that continue from the cached
    last inputs of every causal conv. Pieces that follow the reference's split give exactly the
    frames one decode of all latents would (GroupNorm statistics are per batch of latent frames in
    both). Only the conv caches (a few frames of activations) are kept between pieces.

    `tiled`: decode the frame in 2 x 2 overlapping spatial tiles, each with its own caches, blended
    linearly across the overlaps. About a third of the activation memory, but the GroupNorms see one
    tile at a time, so the pixels differ from the untiled decode (the low-memory profile only).
    """

    def __init__(self, vae: AutoencoderKLCogVideoX, scale_factor: float = SCALE_FACTOR, tiled: bool = False):
        self.vae, self.scale_factor, self.tiled = vae, scale_factor, tiled
        self.cache: dict | None = None
        self.caches: dict[tuple, dict | None] = {}
        self.started = False
        self.batch = vae.num_latent_frames_batch_size

    def reset(self) -> None:
        self.cache, self.caches, self.started = None, {}, False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] latents that follow the ones decoded so far -> [B, 3, F, H', W'] (float32)."""
        dtype = self.vae.decoder.conv_in.conv.weight.dtype
        z = (latents.to(dtype) / self.scale_factor).permute(0, 2, 1, 3, 4)
        frames = z.shape[2]
        if not self.started:
            first = frames % self.batch + self.batch if frames >= self.batch else frames
        else:
            if frames % self.batch:
                raise ValueError(
                    f"a continuation must hold a multiple of {self.batch} latent frames, got {frames}"
                )
            first = self.batch
        self.started = True
        bounds = [0, first, *range(first + self.batch, frames + 1, self.batch)]
        if not self.tiled:
            out, self.cache = self._pieces(z, bounds, self.cache)
            return out
        return self._tiles(z, bounds)

    def _pieces(self, z: torch.Tensor, bounds: list[int], cache: dict | None) -> tuple[torch.Tensor, dict]:
        pieces = []
        for start, end in zip(bounds, bounds[1:], strict=False):
            piece = z[:, :, start:end]
            if self.vae.post_quant_conv is not None:
                piece = self.vae.post_quant_conv(piece)
            out, cache = self.vae.decoder(piece, conv_cache=cache)
            pieces.append(out.float())
        return torch.cat(pieces, dim=2), _drop_pointwise(cache)

    def _tiles(self, z: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        height, width = z.shape[-2:]
        rows, cols = tile_ranges(height), tile_ranges(width)
        canvas: torch.Tensor | None = None
        weights: torch.Tensor | None = None
        for r, (top, bottom) in enumerate(rows):
            for c, (left, right) in enumerate(cols):
                out, self.caches[(r, c)] = self._pieces(
                    z[..., top:bottom, left:right], bounds, self.caches.get((r, c))
                )
                factor = out.shape[-1] // (right - left)
                if canvas is None or weights is None:
                    canvas = out.new_zeros((*out.shape[:3], height * factor, width * factor))
                    weights = out.new_zeros((height * factor, width * factor))
                ramp = torch.outer(blend_ramp(rows, r, factor), blend_ramp(cols, c, factor)).to(out)
                span = (slice(top * factor, bottom * factor), slice(left * factor, right * factor))
                canvas[..., span[0], span[1]] += out * ramp
                weights[span] += ramp
        assert canvas is not None and weights is not None  # there is always at least one tile
        return canvas / weights


def tile_ranges(size: int, parts: int = 2) -> list[tuple[int, int]]:
    """`parts` overlapping [start, end) ranges over `size` latent pixels, overlaps 2 * max(1, size // 16)."""
    if size < 4:
        return [(0, size)]
    step, half = -(-size // parts), max(1, size // 16)
    return [(max(0, i * step - half), min(size, (i + 1) * step + half)) for i in range(parts)]


def blend_ramp(ranges: list[tuple[int, int]], index: int, factor: int) -> torch.Tensor:
    """Weights along one axis of tile `index`: 1 inside, a linear ramp across each overlap with a neighbour,
    so that neighbouring tiles' weights sum to 1 there."""
    start, end = ranges[index]
    weight = torch.ones((end - start) * factor)
    if index > 0:
        overlap = (ranges[index - 1][1] - start) * factor
        weight[:overlap] = (torch.arange(overlap) + 0.5) / overlap
    if index + 1 < len(ranges):
        overlap = (end - ranges[index + 1][0]) * factor
        weight[-overlap:] = (torch.arange(overlap, 0, -1) - 0.5) / overlap
    return weight


def _drop_pointwise(cache):
    """The spatial norms' 1x1x1 convs (conv_y, conv_b) read no earlier frames but cache their whole
    input; dropping those copies keeps only what the next piece reads (kernel-3 convs' last 2 frames)."""
    if isinstance(cache, dict):
        return {k: None if k in ("conv_y", "conv_b") else _drop_pointwise(v) for k, v in cache.items()}
    return cache


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating like the reference."""
    frames = ((video + 1) / 2).clamp(0, 1) * 255
    return frames.permute(1, 2, 3, 0).to(torch.uint8)
