"""Reading checkpoint files into modules, strictly, with errors a user can act on.

Every loader in the engine goes through `load_into`: it compares the file's keys and
shapes with what the module expects, and refuses a partial load with a message that
names the file, the first offending keys, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from torch import nn

from engine.errors import CheckpointError

SHOWN_KEYS = 5


def _first(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return shown + more


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} is missing. {fix}")
    return path


def read_safetensors(
    path: Path, keep: Callable[[str], bool] = lambda key: True, *, fix: str
) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file whose key passes `keep`, on the CPU."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if keep(key)}
    except Exception as error:  # safetensors raises its own SafetensorError for bad headers
        raise CheckpointError(f"{path} could not be read as safetensors ({error}). {fix}") from error


class Shaped(Protocol):
    """A tensor, or anything else that has its shape (`_Shape`: a shape from a file's header)."""

    @property
    def shape(self) -> torch.Size: ...


def check_state_dict(
    expected: Mapping[str, torch.Size], found: Mapping[str, Shaped], *, source: Path, fix: str
) -> None:
    """Raise CheckpointError unless `found` has exactly the expected keys and shapes."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    wrong_shape = _wrong_shapes(expected, found)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} wrong shape(s): " + "; ".join(wrong_shape[:SHOWN_KEYS]))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + ". ".join(problems) + f". {fix}")


def _wrong_shapes(
    expected: Mapping[str, torch.Size], found: Mapping[str, Shaped], prefix: str = ""
) -> list[str]:
    return [
        f"{prefix}{key} is {list(found[key].shape)}, expected {list(expected[key])}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key].shape) != tuple(expected[key])
    ]


def check_shapes(
    expected: Mapping[str, torch.Size],
    found: Mapping[str, Shaped],
    *,
    source: Path,
    fix: str,
    prefix: str = "",
) -> None:
    """Raise CheckpointError if a tensor of `found` that `expected` names has another shape.

    Keys are not compared: this is the check made before tensors are converted (split, concatenated,
    cast), so that nothing of a shape the model does not expect is ever materialised. `prefix` is how
    the file names the keys, for the message.
    """
    wrong_shape = _wrong_shapes(expected, found, prefix)
    if wrong_shape:
        raise CheckpointError(
            f"{source} does not fit the model: {len(wrong_shape)} wrong shape(s): "
            + "; ".join(wrong_shape[:SHOWN_KEYS])
            + f". {fix}"
        )


def safetensors_shapes(
    path: Path, keep: Callable[[str], bool] = lambda key: True, *, fix: str
) -> dict[str, tuple]:
    """Keys and shapes from a .safetensors header, without reading any tensor data."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys() if keep(key)}
    except Exception as error:  # safetensors raises its own SafetensorError for bad headers
        raise CheckpointError(f"{path} could not be read as safetensors ({error}). {fix}") from error


def stream_safetensors_into(
    module: nn.Module,
    path: Path,
    *,
    fix: str,
    keep: Callable[[str], bool] = lambda key: True,
    dtype_for: Callable[[str], torch.dtype | None] = lambda key: None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Strictly load one .safetensors file into `module`, one tensor at a time.

    Keys and shapes are checked from the header before any data is read; each tensor is
    converted to `dtype_for(key)` (None keeps the file's dtype) and `device` as it is read,
    so peak host memory is one tensor, not the whole file.
    """
    require_file(path, "Weights file", fix)
    shapes = safetensors_shapes(path, keep, fix=fix)
    expected = expected_shapes(module)
    check_state_dict(expected, {key: _Shape(shape) for key, shape in shapes.items()}, source=path, fix=fix)
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in shapes:
                tensor = handle.get_tensor(key)
                dtype = dtype_for(key) if tensor.is_floating_point() else None
                tensors[key] = tensor.to(device=device, dtype=dtype)
    except Exception as error:  # safetensors raises its own SafetensorError for bad headers
        raise CheckpointError(f"{path} could not be read ({error}). {fix}") from error
    module.load_state_dict(tensors, strict=True, assign=True)
    return module


class _Shape:
    """Stands in for a tensor where only `.shape` is needed."""

    def __init__(self, shape: tuple):
        self.shape = torch.Size(shape)


def expected_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """Checkpoint-facing keys of a module: parameters and persistent buffers."""
    return {key: value.shape for key, value in module.state_dict(keep_vars=True).items()}


def load_into(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    source: Path,
    fix: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Check `tensors` against `module` and assign them (works for a module built on the meta device).

    Each tensor is converted to its final dtype and device once, so a model built on the
    meta device never exists as a second full-precision copy.
    """
    check_state_dict(expected_shapes(module), tensors, source=source, fix=fix)
    converted = {
        key: value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
        for key, value in tensors.items()
    }
    module.load_state_dict(converted, strict=True, assign=True)
    return module
