"""Which devices an engine's workers own: `serve --gpus all|0,1,3|cpu:N`, parsed without torch.

The engine answers its socket before torch loads, so the CUDA devices are counted through the driver
(libcuda, by ctypes) rather than torch: no torch import, no subprocess, and it honours
CUDA_VISIBLE_DEVICES as torch does. A worker's label is its device's name ("cuda:1", "cpu:0"); "auto" is
the one worker of an engine started without --gpus, on the default device (cuda:0 when CUDA is there,
else the CPU), which it learns once torch has loaded in its thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Callable

AUTO = "auto"
CPU_WORKERS_MAX = 64  # more CPU workers than this only share the same cores thinner


class BadGpus(ValueError):
    """A --gpus or --llm-device value that cannot be served; its message is the one line to print."""


def cuda_device_count() -> int:
    """CUDA devices the driver shows this process (0 without a driver or a GPU), without torch."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0  # a driver without a usable GPU (or one in a bad state) offers nothing to run on
    return count.value


def parse_gpus(text: str | None, count_cuda: Callable[[], int] = cuda_device_count) -> list[str]:
    """The devices the engine's workers own, one worker each: ["cuda:0", "cuda:2"], ["cpu:0", "cpu:1"],
    or [AUTO] when `text` is None (one worker on the default device, as an engine always had).

    `all` is every CUDA device; `0,1,3` those indices; `cpu:N` N workers on the CPU. Raises BadGpus
    (one line naming the problem and what to give instead)."""
    if text is None:
        return [AUTO]
    given = text.strip().lower()
    cpu = re.fullmatch(r"cpu:(\d+)", given)
    if cpu:
        workers = int(cpu.group(1))
        if not 1 <= workers <= CPU_WORKERS_MAX:
            raise BadGpus(f"--gpus {text}: give between 1 and {CPU_WORKERS_MAX} CPU workers (cpu:2, say)")
        return [f"cpu:{index}" for index in range(workers)]
    if given == "all":
        found = count_cuda()
        if found == 0:
            raise BadGpus("--gpus all: no CUDA GPU is visible here; use --gpus cpu:N or leave --gpus out")
        return [f"cuda:{index}" for index in range(found)]
    if not re.fullmatch(r"\d+(,\d+)*", given.replace(" ", "")):
        raise BadGpus(f"--gpus {text!r} is not a device list: give all, GPU indices such as 0,1,3, or cpu:N")
    indices = [int(part) for part in given.replace(" ", "").split(",")]
    repeated = sorted({index for index in indices if indices.count(index) > 1})
    if repeated:
        raise BadGpus(f"--gpus {text}: GPU {repeated[0]} is named twice; name each GPU once")
    found = count_cuda()
    missing = [index for index in indices if index >= found]
    if missing:
        seen = (
            "no CUDA GPU is visible here"
            if found == 0
            else f"this machine shows {found} GPU(s), 0-{found - 1}"
        )
        raise BadGpus(f"--gpus {text}: there is no GPU {missing[0]} ({seen})")
    return [f"cuda:{index}" for index in indices]


def parse_llm_device(text: str, count_cuda: Callable[[], int] = cuda_device_count) -> str:
    """The LLM lane's device (`serve --llm-device`): "cuda:2" for `2` or `cuda:2`, "cpu" for `cpu`.
    Raises BadGpus naming what is wrong."""
    given = text.strip().lower()
    if given == "cpu":
        return "cpu"
    index = re.fullmatch(r"(?:cuda:)?(\d+)", given)
    if index is None:
        raise BadGpus(f"--llm-device {text!r} is not a device: give a GPU index (2), cuda:2, or cpu")
    found = count_cuda()
    if int(index.group(1)) >= found:
        seen = "no CUDA GPU is visible here" if found == 0 else f"this machine shows {found} GPU(s)"
        raise BadGpus(f"--llm-device {text}: there is no GPU {index.group(1)} ({seen}); give another or cpu")
    return f"cuda:{index.group(1)}"


def torch_device_name(label: str) -> str | None:
    """The torch device a worker's label stands for: "cpu:1" -> "cpu" (CPU workers share the CPU),
    "cuda:1" -> "cuda:1", AUTO -> None (the pipeline picks its default)."""
    if label == AUTO:
        return None
    return "cpu" if label.startswith("cpu") else label
