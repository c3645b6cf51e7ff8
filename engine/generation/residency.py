"""Where each model's weights are while a job runs: the device, or host copies fetched when needed.

A module under `Residency` keeps its weights on the host (pinned on CUDA, so copies can be asynchronous).
Fetching makes device copies and points the module's parameters at them; dropping points them back at
the host copies and lets the device copies go: nothing is ever copied back. A prefetch runs on a side
stream while the current stream computes; `ready` makes the current stream wait for it. The transformer
blocks of the DiT can be streamed: each block fetched while the one before it runs and dropped after it
ran, optionally held on the host as 8-bit rows with one scale each (dequantised on arrival).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn


class MovableStage:
    """Mixin for a stage that holds models; `residency` brings them to the device as its profile says."""

    device: torch.device
    residency: Residency | None = None

    def modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def transient(self) -> list[nn.Module]:
        """Models the stage needs only for part of its work (the encoders, the language model)."""
        return []

    def ready(self, *modules: nn.Module) -> None:
        if self.residency is not None:
            for module in modules:
                self.residency.ready(module)

    def drop(self, *modules: nn.Module) -> None:
        if self.residency is not None:
            for module in modules:
                self.residency.drop(module)

    def adopt(self, residency: Residency) -> None:
        """Hand every model to `residency` (its weights go to host copies until they are needed)."""
        for module in self.modules():
            residency.adopt(module)
        self.residency = residency

    def leave(self) -> None:
        """Drop the transient models from the device (after the stage, or after a failure inside it)."""
        self.drop(*self.transient())


@dataclass
class Slot:
    """One parameter or buffer of a managed module, with its host copy."""

    owner: nn.Module
    name: str
    host: torch.Tensor  # the weight itself, or int8 rows when `scale` is set
    scale: torch.Tensor | None = None
    dtype: torch.dtype | None = None

    def current(self) -> torch.Tensor:
        tensor = self.owner._parameters.get(self.name, self.owner._buffers.get(self.name))
        assert tensor is not None  # a slot is made for a registered tensor, never for a None entry
        return tensor

    def point_at(self, tensor: torch.Tensor) -> None:
        if self.name in self.owner._parameters:
            self.current().data = tensor
        else:
            self.owner._buffers[self.name] = tensor

    def on_host(self) -> torch.Tensor:
        # an 8-bit slot has no full-precision host copy: a dropped block holds an empty placeholder
        return self.host if self.scale is None else torch.empty(0, dtype=self.dtype)

    def on_device(self, device: torch.device) -> torch.Tensor:
        if self.scale is None:
            return self.host.to(device, non_blocking=True)
        rows = self.host.to(device, non_blocking=True)
        return (rows.to(torch.float32) * self.scale.to(device, non_blocking=True)).to(self.dtype)


@dataclass
class Entry:
    slots: list[Slot]
    on_device: bool = False
    event: torch.cuda.Event | None = None


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight ~ rows * scale, scale [out, 1] float32."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


class Residency:
    """Host copies and device fetches for the modules of one pipeline. `overlap`: whether a whole module
    may be prefetched while another computes (balanced), or only streamed blocks (low)."""

    def __init__(self, device: torch.device, overlap: bool):
        self.device, self.overlap = device, overlap
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.entries: dict[int, Entry] = {}

    def adopt(self, module: nn.Module, skip: tuple[nn.Module, ...] = (), quantize: bool = False) -> None:
        """Manage `module` (not the subtrees in `skip`): its weights move to host copies now.
        `quantize`: hold its matrices (2-D floating weights) as 8-bit rows."""
        skipped = {id(m) for m in skip}
        seen: set[int] = set()
        slots = []
        stack = [module]
        while stack:
            owner = stack.pop()
            if id(owner) in skipped:
                continue
            stack.extend(owner.children())
            tensors = [*owner._parameters.items(), *owner._buffers.items()]
            for name, tensor in tensors:
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))  # a tied weight is one parameter object: one slot moves both owners
                slots.append(self._slot(owner, name, tensor, quantize))
        entry = Entry(slots)
        self.entries[id(module)] = entry
        for slot in slots:
            slot.point_at(slot.on_host())

    def _slot(self, owner: nn.Module, name: str, tensor: torch.Tensor, quantize: bool) -> Slot:
        data = tensor.detach()
        if quantize and data.ndim == 2 and data.is_floating_point() and name == "weight":
            rows, scale = quantize_rows(data.cpu())
            return Slot(owner, name, self._pin(rows), self._pin(scale), data.dtype)
        return Slot(owner, name, self._pin(data.cpu()))

    def _pin(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if self.cuda and not tensor.is_pinned() else tensor

    def manages(self, module: nn.Module) -> bool:
        return id(module) in self.entries

    def _fetch(self, module: nn.Module, background: bool) -> None:
        entry = self.entries.get(id(module))
        if entry is None or entry.on_device:
            return
        stream = self.copy_stream if background and self.cuda else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            tensors = [slot.on_device(self.device) for slot in entry.slots]
            if stream is not None:
                entry.event = torch.cuda.Event()
                entry.event.record(stream)
        if stream is not None:  # allocated on the side stream, used on the current one
            current = torch.cuda.current_stream(self.device)
            for tensor in tensors:
                tensor.record_stream(current)
        for slot, tensor in zip(entry.slots, tensors, strict=True):
            slot.point_at(tensor)
        entry.on_device = True

    def prefetch(self, module: nn.Module) -> None:
        """Start fetching `module` on the side stream (only where the profile lets fetches overlap)."""
        if self.overlap:
            self._fetch(module, background=True)

    def ready(self, module: nn.Module) -> None:
        """`module` on the device, as far as the current stream can tell."""
        entry = self.entries.get(id(module))
        if entry is None:
            return
        if not entry.on_device:
            self._fetch(module, background=False)
        if entry.event is not None:
            torch.cuda.current_stream(self.device).wait_event(entry.event)
            entry.event = None

    def drop(self, module: nn.Module) -> None:
        entry = self.entries.get(id(module))
        if entry is None or not entry.on_device:
            return
        for slot in entry.slots:
            slot.point_at(slot.on_host())
        entry.on_device, entry.event = False, None

    def stream(self, blocks: list[nn.Module], quantize: bool) -> None:
        """Blocks that run in this order: each fetched (on the side stream) while the one before runs,
        dropped once it has run. At most two are on the device at a time."""
        for index, block in enumerate(blocks):
            self.adopt(block, quantize=quantize)
            following = blocks[(index + 1) % len(blocks)]

            def before(module, args, following=following):
                self.ready(module)
                self._fetch(following, background=True)

            block.register_forward_pre_hook(before)
            block.register_forward_hook(lambda module, args, out: self.drop(module))

    def device_bytes(self) -> int:
        """Bytes of managed weights now on the device."""
        return sum(
            slot.current().numel() * slot.current().element_size()
            for entry in self.entries.values()
            if entry.on_device
            for slot in entry.slots
        )
