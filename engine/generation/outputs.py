"""A job's files beside its video: the semantic tokens (.npy), its JSON record, peak memory for it."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import write_atomically


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def save_tokens(codes: np.ndarray, path: Path) -> None:
    write_atomically(path, lambda partial: np.save(partial, codes))


def load_tokens(path: Path) -> torch.Tensor:
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"--tokens {path} is not a saved token array ({error})") from None
    if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"--tokens {path} should hold a 1-D integer array, found {codes.dtype} {list(codes.shape)}"
        )
    return torch.from_numpy(codes.astype(np.int64))


def write_record(path: Path, record: dict[str, Any]) -> None:
    write_atomically(path, lambda partial: partial.write_text(json.dumps(record, indent=2) + "\n"))
