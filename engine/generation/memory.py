"""Memory profiles: which models stay on the GPU between and during jobs."""

from __future__ import annotations

import torch

MEMORY_PROFILES = ("auto", "resident", "offload")
RESIDENT_MIN_GPU_BYTES = 48 * 2**30  # both stages of the release in bf16 take about 30 GiB


def resolve_memory_profile(profile: str, device: torch.device) -> str:
    """`resident` keeps every model on the device; `offload` keeps only the running stage there."""
    if profile not in MEMORY_PROFILES:
        raise ValueError(f"memory profile must be one of {', '.join(MEMORY_PROFILES)}, got {profile!r}")
    if device.type != "cuda":
        return "resident"
    if profile == "auto":
        total = torch.cuda.get_device_properties(device).total_memory
        return "resident" if total >= RESIDENT_MIN_GPU_BYTES else "offload"
    return profile
