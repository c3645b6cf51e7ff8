"""Random weights for a module, and writing tensors to disk whole or not at all: what the tiny model, its
CLIP and the benchmarks' full-size random releases are made with."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.atomic import write_atomically


def randomise(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> nn.Module:
    """Matrices ~ N(0, std); norm weights near 1, biases near 0; nothing left at zero."""
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim == 1 and name.endswith("weight"):
                tensor.copy_(1.0 + 0.1 * noise)
            elif tensor.ndim == 1:
                tensor.copy_(0.1 * noise)
            else:
                tensor.copy_(std * noise)
    return module


def save_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    contiguous = {key: value.contiguous() for key, value in tensors.items()}
    write_atomically(path, lambda partial: save_file(contiguous, str(partial)))


def save_torch_atomically(content: dict, path: Path) -> None:
    write_atomically(path, lambda partial: torch.save(content, partial))
