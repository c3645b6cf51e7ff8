"""The stage-2 schedule and guidance against the values the reference computes (architecture facts, 4.7)."""

from __future__ import annotations

import pytest
import torch

from engine.models.dpm_sampler import DiffusionCancelled, DpmSolverSampler, ZeroSNRSchedule, dynamic_cfg_scale


def test_fifty_step_schedule_matches_the_reference_table():
    alphas, timesteps = ZeroSNRSchedule().sampler_alphas(50)
    assert timesteps[:3] == [999, 979, 959] and timesteps[-1] == 19
    assert alphas[0] == 0 and alphas[-1] == 1
    for step, expected in ((1, 0.005220), (2, 0.010925), (25, 0.310114), (42, 0.762720), (49, 0.973940)):
        assert float(alphas[step]) == pytest.approx(expected, abs=2e-6)


def test_denoiser_snaps_to_the_1000_step_table_one_row_early_below_160():
    schedule = ZeroSNRSchedule()
    table = schedule.denoiser_table()
    alphas, timesteps = schedule.sampler_alphas(50)
    rows = [int((a - table).abs().argmin()) for a in alphas[:-1]]
    chosen = [999 - row for row in rows]  # table index k is timestep 999 - k
    assert chosen[:42] == timesteps[:42]
    assert chosen[42:] == [t - 1 for t in timesteps[42:]]
    assert float(table[999 - 19]) == pytest.approx(0.972920, abs=2e-6)


def test_dynamic_guidance_uses_the_ddpm_timestep():
    expected = {999: 2.2915, 979: 2.5435, 959: 6.9744, 879: 1.0376, 59: 1.0000, 19: 1.1234}
    for timestep, scale in expected.items():
        assert dynamic_cfg_scale(timestep, 50) == pytest.approx(scale, abs=1e-4)
    assert [round(dynamic_cfg_scale(t, 3), 6) for t in (999, 666, 333)] == [1.0, 7.0, 1.0]


def test_noise_draws_progress_and_cancellation():
    draws = []

    def draw(like: torch.Tensor) -> torch.Tensor:
        draws.append(1)
        return torch.zeros_like(like)

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    progress = []
    DpmSolverSampler().sample(
        network, torch.randn(1, 2, 4, 2, 2), 5, draw_noise=draw, on_step=lambda *p: progress.append(p)
    )
    assert len(draws) == 1 + 2 * 3  # one at the first step, two per middle step, none at the last
    assert progress == [(i, 5) for i in range(1, 6)]
    with pytest.raises(DiffusionCancelled):
        DpmSolverSampler().sample(network, torch.randn(1, 2, 4, 2, 2), 5, should_stop=lambda: True)
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        DpmSolverSampler().sample(network, torch.randn(1, 2, 4, 2, 2), 0)


def test_bf16_network_output_is_combined_in_float32():
    sampler, schedule = DpmSolverSampler(), ZeroSNRSchedule()
    table = schedule.denoiser_table()
    alphas, timesteps = schedule.sampler_alphas(50)
    x = torch.randn(1, 2, 4, 2, 2)
    v = torch.randn(2, 2, 4, 2, 2).to(torch.bfloat16)
    denoised = sampler.denoise(lambda latents, t: v, x, alphas[30], timesteps[30], 50, table)
    assert denoised.dtype == torch.float32
    a = table[(alphas[30] - table).abs().argmin()]
    both = v.float() * -((1 - a**2) ** 0.5) + torch.cat([x, x]) * a
    scale = dynamic_cfg_scale(timesteps[30], 50)
    torch.testing.assert_close(denoised, both[:1] + (both[1:] - both[:1]) * scale)
