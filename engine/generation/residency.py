"""Moving a stage's models between the GPU and host memory as one unit."""

from __future__ import annotations

import torch


class MovableStage:
    """Mixin for a stage that holds models and the device they run on."""

    device: torch.device

    def modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def to(self, device: torch.device):
        for module in self.modules():
            module.to(device)
        self.device = device
        return self
