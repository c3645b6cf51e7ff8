"""Rotary position embeddings with the interleaved-pair convention LanDiff uses.

Channel pairs are adjacent (2j, 2j+1) and rotated as one complex number, not the
"rotate half" layout of many Hugging Face models. Angles and the rotation run in
float32; the result is cast back to the input dtype.
"""

from __future__ import annotations

import torch


def rotation_frequencies(num_pairs: int, theta: float = 10000.0) -> torch.Tensor:
    """omega_j = theta^(-2j / (2 * num_pairs)) for j < num_pairs, float32."""
    exponents = torch.arange(0, 2 * num_pairs, 2, dtype=torch.float32)[:num_pairs]
    return 1.0 / (theta ** (exponents / (2 * num_pairs)))


def rope_angles_to_cis(angles: torch.Tensor) -> torch.Tensor:
    """Unit complex numbers cos(a) + i sin(a), complex64."""
    angles = angles.float()
    return torch.polar(torch.ones_like(angles), angles)


def rope_1d(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """cis(position * omega) for 1-D positions: shape [*positions.shape, head_dim // 2]."""
    freqs = rotation_frequencies(head_dim // 2, theta).to(positions.device)
    return rope_angles_to_cis(positions.float().unsqueeze(-1) * freqs)


def apply_rope(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., seq, heads, head_dim] by cis [..., seq, head_dim // 2] (broadcast over heads).

    cis is complex, or its real view [..., seq, head_dim // 2, 2] (cos, sin): the form for torch.compile,
    whose inductor writes no kernels for complex numbers; eager, the complex product is fewer kernels."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    if cis.is_complex():
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * cis.unsqueeze(-2))
    else:
        cos, sin = cis.unsqueeze(-3).unbind(-1)
        real, imaginary = pairs.unbind(-1)
        rotated = torch.stack([real * cos - imaginary * sin, real * sin + imaginary * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)
