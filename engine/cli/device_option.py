"""`--device` of the commands that run a model in their own process (tokens, generate, verify)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def parse_device(name: str | None) -> torch.device | None:
    """The torch device `--device` names (None: the default one), refused in one line when it is not one
    or is a GPU this box does not have."""
    import torch

    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device (try cuda or cpu): {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    return device
