"""What the engine reports about its device: name and memory, without importing torch itself."""

from __future__ import annotations

import resource
from typing import Any


def device_status(torch_ready: bool) -> dict[str, Any]:
    if not torch_ready:  # importing torch here would stall every client for seconds
        return {"device": "starting (torch is loading)", "memory_used_bytes": None}
    import torch  # already loaded by the worker thread: this only looks it up

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {
            "device": torch.cuda.get_device_name(),
            "memory_used_bytes": total - free,
            "memory_total_bytes": total,
        }
    return {"device": "cpu", "memory_used_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
