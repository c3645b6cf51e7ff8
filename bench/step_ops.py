"""What one decoding step of the language model launches, counted by the profiler.

An operator the step calls launches work unless it is a view or an allocation whose own operators launch
none (`reshape` as a `view`; `to` launches when it copies). Operators inside an operator are its own
business (a CPU kernel's internal calls; on CUDA they are one kernel) and not counted. A compiled region
counts what its graph calls: each of inductor's generated kernels and each op it leaves to aten (`mm`,
attention). So `linear` is one, as on a GPU, and a fused kernel is one. Inductor's CPU kernels show in the
profiler only when compiled with `cpp.enable_kernel_profile` (`kernel_profile()`).
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

GENERATED = ("cpp_fused", "triton_")  # inductor's kernel names (CPU, CUDA), within the graph's prefix
ALLOCATIONS = ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_")


@functools.cache
def is_view(name: str) -> bool:
    """Whether aten op `name` ("aten::transpose") returns an alias of an input."""
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None or not packet.overloads():
        return False
    schema = getattr(packet, packet.overloads()[0])._schema
    return any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def launches_work(event) -> bool:
    if event.name in ALLOCATIONS:
        return False
    if not is_view(event.name):
        return True
    return any(launches_work(child) for child in event.cpu_children if child.name.startswith("aten::"))


def count(event, counted: Counter[str]) -> None:
    name = event.name
    if any(kind in name for kind in GENERATED):
        counted["inductor kernels"] += 1
    elif name.startswith("aten::"):
        if launches_work(event):
            counted[name] += 1
    else:  # a region (the compiled graph's record_function): what it calls
        for child in event.cpu_children:
            count(child, counted)


def launches(run: Callable[[], object]) -> Counter[str]:
    """The launches of one call of `run`, by operator name ("inductor kernels" for generated ones)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    counted: Counter[str] = Counter()
    for event in prof.events():
        if event.cpu_parent is None:
            count(event, counted)
    return counted


class Dispatched(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def dispatched(run: Callable[[], object]) -> Counter[str]:
    """Every aten op one eager call of `run` dispatches, views included (torch.compile refuses the mode)."""
    with Dispatched() as mode:
        run()
    return mode.seen


def kernel_profile() -> contextlib.AbstractContextManager:
    """Compile inside it to see inductor's CPU kernels in the profiler."""
    import torch._inductor.config as inductor

    return inductor.patch({"cpp.enable_kernel_profile": True})
