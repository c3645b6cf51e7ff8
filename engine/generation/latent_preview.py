"""Live previews while denoising: the sampler's denoised estimate (x0) as a rough picture, cheaply.

A `Projection` is a linear map of one latent frame's channels to RGB (a [C + 1, 3] matrix, the last row the
bias), fitted once per pipeline to the model's own VAE: a few smooth random latents, constant in time, are
decoded, each decoded frame is averaged down to the latent grid, and RGB is regressed on the latent
channels by least squares. Applying it costs one [H W, C] x [C, 3] product at latent resolution (60 x 90
for the release) and one copy of a [H, W, 3] uint8 picture to the host, only on the steps that show one.

`PreviewClock` says which steps show one: at most one a `PREVIEW_INTERVAL_S` (the first step always, never
the last: the chunk's decoded frame follows at once). Bounded by time, not by a step count, the cost
stays below (one preview's cost) / PREVIEW_INTERVAL_S of the job however fast or slow its steps are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.models.dpm_sampler import DpmSolverSampler

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 1.0  # at most one live preview a second per job
FIT_SAMPLES = 4  # random latents decoded to fit the projection
FIT_GRID = 16  # their latent height and width (at most the model's)
FIT_FRAMES = 1  # latent frames each (equal in time); the last decoded frame is regressed on that latent
FIT_SEED = 0  # its own generator: fitting never draws from a job's


@dataclass(frozen=True)
class Projection:
    """Latent channels -> RGB in [-1, 1]: rgb = [latent, 1] @ matrix, with matrix [C + 1, 3] (float32)."""

    matrix: torch.Tensor

    @property
    def channels(self) -> int:
        return self.matrix.shape[0] - 1

    def rgb(self, frame: torch.Tensor) -> torch.Tensor:
        """One latent frame [C, H, W] -> RGB [H, W, 3] in about [-1, 1] (float32, on the frame's device)."""
        matrix = self.matrix.to(frame.device)
        pixels = frame.float().permute(1, 2, 0)  # [H, W, C]
        return pixels @ matrix[:-1] + matrix[-1]

    def image(self, frame: torch.Tensor) -> np.ndarray:
        """One latent frame [C, H, W] -> a uint8 picture [H, W, 3] on the host (the only sync it makes)."""
        pixels = ((self.rgb(frame) + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        return pixels.cpu().numpy()


def smooth_latents(
    count: int, frames: int, channels: int, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """Random latents [count, frames, C, H, W] with image-like structure: coarse noise upsampled, plus a
    little fine noise, each channel at unit variance (the sampler's latents' scale); equal in time."""
    coarse = torch.randn(count, channels, max(height // 4, 1), max(width // 4, 1), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    fine = torch.randn(count, channels, height, width, generator=generator)
    latents = smooth + 0.3 * fine
    latents = latents / latents.std(dim=(0, 2, 3), keepdim=True)
    return latents[:, None].expand(count, frames, channels, height, width).contiguous()


@torch.no_grad()
def fit_projection(
    decode: Callable[[torch.Tensor], torch.Tensor],
    channels: int,
    grid: tuple[int, int],
    device: torch.device,
    samples: int = FIT_SAMPLES,
) -> Projection:
    """Fit the projection to a VAE: `decode` maps latents [1, T, C, H, W] to video [1, 3, F, H', W'] in
    [-1, 1] (engine.models.video_vae.decode_latents). `grid`: the model's latent height and width (the fit
    uses at most FIT_GRID of each). Runs on `device`; the least squares run on the host, in float64."""
    height, width = min(grid[0], FIT_GRID), min(grid[1], FIT_GRID)
    generator = torch.Generator().manual_seed(FIT_SEED)
    latents = smooth_latents(samples, FIT_FRAMES, channels, height, width, generator)
    inputs, targets = [], []
    for latent in latents:
        video = decode(latent[None].to(device))  # [1, 3, F, H', W']
        frame = F.adaptive_avg_pool2d(video[0, :, -1].float(), (height, width))  # [3, H, W]
        inputs.append(latent[-1].reshape(channels, -1).T.double())
        targets.append(frame.reshape(3, -1).T.double().cpu())
    x = torch.cat(inputs)
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    y = torch.cat(targets)
    matrix = torch.linalg.lstsq(x, y).solution.float()
    return Projection(matrix.to(device))


class PreviewClock:
    """Which denoising steps show a preview: the first, then at most one a `interval_s`, never the last."""

    def __init__(
        self, interval_s: float = PREVIEW_INTERVAL_S, clock: Callable[[], float] = time.perf_counter
    ):
        self.interval_s, self.clock = interval_s, clock
        self.last: float | None = None

    def due(self, step: int, total: int) -> bool:
        if step >= total:
            return False
        now = self.clock()
        if self.last is not None and now - self.last < self.interval_s:
            return False
        self.last = now
        return True


@dataclass(frozen=True)
class WatchedSampler(DpmSolverSampler):
    """The stage-2 sampler, keeping a reference to its latest denoised estimate x0 [B, T, C, H, W] (the
    guided prediction each step makes; the sampler keeps it for its next step anyway: no copy, no sync)."""

    latest: list[torch.Tensor] = field(default_factory=list, compare=False, repr=False)

    def denoise(self, *args, **kwargs) -> torch.Tensor:
        denoised = super().denoise(*args, **kwargs)
        self.latest[:] = [denoised]
        return denoised
