"""LanDiff's stage-2 sampler: VP-SDE DPM-Solver++(2M) on a zero-terminal-SNR schedule.

Exactly the reference's arithmetic (SAT `VPSDEDPMPP2MSampler` with `DiscreteDenoiser`,
`VideoScaling` and `DynamicCFG`):

- a linear-in-sqrt beta schedule over 1000 steps, SNR shifted by 3, and sqrt(alpha_bar)
  rescaled to reach 0 at the last step; the sampler rescales over its own subset of
  timesteps, while the denoiser snaps each value to the nearest entry of the 1000-step table;
- v-prediction: D = a x - sqrt(1 - a^2) v, guidance D_u + s (D_c - D_u) with the batch
  ordered [uncond, cond] and s computed from the DDPM timestep (not the step index);
- one noise draw at the first step, two per middle step (the first is wasted), none at the last.

A clean latent `prefix` (a long video's overlap with the chunk before) is held fixed the way the
reference's `fixed_frames` hook does by default: the first frames of x are overwritten with the clean
prefix before every network call and once more at the end, as in its training loss (clean prefix frames
in a noised input). The reference's optional `sdedit` variant, re-noising the prefix to each step's
level, is not used.

State and schedule math are float32; the network may run in any dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# network(x [2B, T, C, H, W], timesteps [2B]) -> v, with the batch ordered [uncond, cond]
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Callable[[torch.Tensor], torch.Tensor]


class DiffusionCancelled(Exception):
    """The caller's cancellation check asked to stop between two denoising steps."""


@dataclass(frozen=True)
class ZeroSNRSchedule:
    num_train_steps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    shift: float = 3.0

    def alphas_cumprod(self) -> np.ndarray:
        betas = torch.linspace(
            self.linear_start**0.5, self.linear_end**0.5, self.num_train_steps, dtype=torch.float64
        )
        alphas_cumprod = np.cumprod(1.0 - (betas**2).numpy(), axis=0)
        return alphas_cumprod / (self.shift + (1 - self.shift) * alphas_cumprod)

    def sqrt_alphas(self, timesteps: np.ndarray) -> torch.Tensor:
        """sqrt(alpha_bar) at ascending `timesteps`, rescaled so the last is 0; returned descending in t."""
        a = torch.tensor(self.alphas_cumprod()[timesteps], dtype=torch.float32).sqrt()
        first, last = a[0].clone(), a[-1].clone()
        a -= last
        a *= first / (first - last)
        return torch.flip(a, (0,))

    def denoiser_table(self) -> torch.Tensor:
        """All training timesteps, descending (index k is timestep 999 - k)."""
        return self.sqrt_alphas(np.arange(self.num_train_steps))

    def sampling_timesteps(self, num_steps: int) -> np.ndarray:
        """Ascending DDPM timesteps of an n-step run, e.g. 19, 39, ..., 999 for 50."""
        if not 1 <= num_steps <= self.num_train_steps:
            raise ValueError(f"steps must be between 1 and {self.num_train_steps}, got {num_steps}")
        last = self.num_train_steps - 1
        return np.linspace(last, 0, num_steps, endpoint=False).astype(int)[::-1]

    def sampler_alphas(self, num_steps: int) -> tuple[torch.Tensor, list[int]]:
        """(sqrt(alpha_bar) for steps 0..n-1 plus a final 1, DDPM timestep of each step), descending in t."""
        timesteps = self.sampling_timesteps(num_steps)
        if num_steps == self.num_train_steps:
            timesteps = np.arange(self.num_train_steps)
        alphas = torch.cat([self.sqrt_alphas(timesteps), torch.ones(1)])
        return alphas, [int(t) for t in timesteps[::-1]]


def dynamic_cfg_scale(timestep: int, num_steps: int, scale: float = 6.0, exponent: float = 5.0) -> float:
    """The reference's guidance schedule, fed the DDPM timestep where a step index was meant (trap 2)."""
    step_index = num_steps - timestep
    return 1 + scale * (1 - math.cos(math.pi * (step_index / num_steps) ** exponent)) / 2


def _log_snr(a: torch.Tensor) -> torch.Tensor:
    alpha_bar = a**2
    return ((alpha_bar / (1 - alpha_bar)) ** 0.5).log()


@dataclass(frozen=True)
class DpmSolverSampler:
    schedule: ZeroSNRSchedule = ZeroSNRSchedule()
    guidance_scale: float = 6.0
    guidance_exponent: float = 5.0

    def denoise(
        self,
        network: Network,
        x: torch.Tensor,
        a: torch.Tensor,
        timestep: int,
        num_steps: int,
        table: torch.Tensor,
    ) -> torch.Tensor:
        """Guided x0 prediction D (float32) at sampler level a."""
        snapped = table[(a - table).abs().argmin()]  # the denoiser's own 1000-step value
        doubled = torch.cat([x, x])
        timesteps = torch.full((doubled.shape[0],), float(timestep), device=x.device)
        # float32 like the reference, where per-sample scalings promote the network's bf16 output
        v = network(doubled, timesteps).float()
        denoised = v * -((1 - snapped**2) ** 0.5) + doubled * snapped
        uncond, cond = denoised.chunk(2)
        scale = dynamic_cfg_scale(timestep, num_steps, self.guidance_scale, self.guidance_exponent)
        return uncond + (cond - uncond) * scale

    def sample(
        self,
        network: Network,
        noise: torch.Tensor,
        num_steps: int,
        *,
        draw_noise: NoiseSource | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Latents [B, T, C, H, W] (float32) from the initial noise.

        Fresh noise comes from draw_noise(like) when given (tests replay recorded draws),
        else from randn with `generator`. prefix [B, P, C, H, W]: clean latents that replace
        the first P frames of x before every step and in the result.
        """
        if draw_noise is None:

            def draw_noise(like: torch.Tensor) -> torch.Tensor:
                return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

        alphas, timesteps = self.schedule.sampler_alphas(num_steps)
        alphas = alphas.to(noise.device)
        table = self.schedule.denoiser_table().to(noise.device)
        x = noise.to(torch.float32)
        fixed = 0
        if prefix is not None:
            fixed = prefix.shape[1]
            if fixed >= x.shape[1] or prefix.shape[0] != x.shape[0] or prefix.shape[2:] != x.shape[2:]:
                raise ValueError(f"prefix {list(prefix.shape)} does not fit latents {list(x.shape)}")
            prefix = prefix.to(device=x.device, dtype=torch.float32)
        previous = None
        for i in range(num_steps):
            if should_stop is not None and should_stop():
                raise DiffusionCancelled(f"stopped after {i} of {num_steps} denoising steps")
            if prefix is not None and fixed:
                x = torch.cat([prefix, x[:, fixed:]], dim=1)
            a, a_next = alphas[i], alphas[i + 1]
            denoised = self.denoise(network, x, a, timesteps[i], num_steps, table)
            if i == num_steps - 1:
                x = denoised
            else:
                h = _log_snr(a_next) - _log_snr(a)
                mult1 = ((1 - a_next**2) / (1 - a**2)) ** 0.5 * (-h).exp()
                mult2 = (-2 * h).expm1() * a_next
                sigma = (1 - a_next**2) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
                x_first = mult1 * x - mult2 * denoised + sigma * draw_noise(x)
                if previous is None:
                    x = x_first
                else:
                    r = (_log_snr(a) - _log_snr(alphas[i - 1])) / h
                    corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
                    x = mult1 * x - mult2 * corrected + sigma * draw_noise(x)
            previous = denoised
            if on_step is not None:
                on_step(i + 1, num_steps)
        if prefix is not None and fixed:
            x = torch.cat([prefix, x[:, fixed:]], dim=1)
        return x
