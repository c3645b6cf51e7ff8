"""What a job's record keeps of where it ran and what it made, for `verify` (engine/generation/verify.py)
to compare: the `environment` block (versions, device, kernels' flags) and the `hashes` block (the tokens'
and each chunk's frames' SHA-256). Written by Pipeline.sidecar_record; no I/O beyond reading versions.
"""

from __future__ import annotations

import hashlib
import platform
import re
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

VERSIONED = ("numpy", "diffusers", "transformers")
NOT_CAUSES = ("weights_root",)  # recorded to find the weights again; the weights' hashes are compared


def environment(device: torch.device, weights_root: Path | None = None) -> dict[str, Any]:
    """Where a job ran, as its record keeps it: flat, JSON values (None: not known, or not on CUDA)."""
    cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in VERSIONED},
        "cpu_capability": cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
        "driver": driver_version() if cuda else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        **tf32_flags(),
    }
    if weights_root is not None:
        env["weights_root"] = str(weights_root)
    return env


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_capability() -> str | None:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - an older torch
        return None


def tf32_flags() -> dict[str, Any]:
    with warnings.catch_warnings():  # newer torch deprecates allow_tf32 for fp32_precision
        warnings.simplefilter("ignore")
        return {
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }


DRIVER_FILE = Path("/proc/driver/nvidia/version")


def driver_version() -> str | None:
    """The NVIDIA driver's version: from NVML when the nvidia-ml-py package is there, else Linux's
    /proc/driver/nvidia/version; None when neither says."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            found = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return found.decode() if isinstance(found, bytes) else str(found)
    except Exception:  # not installed, or no NVML library: the file, then nothing
        pass
    try:
        text = DRIVER_FILE.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def tokens_sha256(codes: np.ndarray | torch.Tensor) -> str:
    """The tokens' SHA-256: of their values as little-endian int64, whatever array holds them."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(codes, dtype="<i8").tobytes()).hexdigest()


def record_hashes(tokens: Path, frames_sha256: list[str]) -> dict[str, Any]:
    """The record's `hashes`: of the tokens saved at `tokens`, and each chunk's frames' (in order)."""
    return {
        "tokens_sha256": tokens_sha256(np.load(tokens, allow_pickle=False)),
        "frames_sha256": list(frames_sha256),
    }
