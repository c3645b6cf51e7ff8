"""Step caching for the control DiT: reuse a CFG branch's last block residual while its input barely moves.

Between two sampler steps the transformer blocks often change the video tokens by nearly the same amount.
The signal is the first main block's timestep-modulated video input (`norm1` of main block 0): per CFG
branch (batch row), its relative L1 change since the previous call, accumulated over calls. While a
branch's accumulation stays under the threshold, the branch skips the blocks and adds its cached
residual (the main stream's video tokens after the blocks minus before) to its fresh embedding; when the
accumulation reaches the threshold, the branch runs the blocks, its residual is refreshed and its
accumulation starts again from zero. The first and the last call of a run always run the blocks.

The signal is used raw, not through TeaCache's polynomial: that polynomial maps the input change to the
output change of plain CogVideoX-2b, fitted on its real weights; LanDiff's DiT adds the control branch to
every main block, and there are no real weights here to fit or check a mapping on. Thresholds are
therefore on their own scale, not TeaCache's.

In the sampler's batch [uncond, cond] both rows have the same latents and timestep and the modulated video
input does not read the text, so the two branches normally decide alike; each still keeps its own
residual (the text differs), and a branch that does decide otherwise runs alone.

One `StepCache` serves one sampler run (one chunk of a long video): it counts calls to know the last.
Plain PyTorch, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from engine.models.control_dit import ControlDiT, Streams


@dataclass
class CacheCounts:
    """DiT calls of a job, counted per CFG branch: a sampler step asks for two (uncond and cond)."""

    calls: int = 0  # branch passes asked for
    skipped: int = 0  # of those, answered with the branch's cached residual instead of the blocks


def relative_change(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per batch row: mean |current - previous| / mean |previous|, float32 [B]."""
    current, previous = current.float().flatten(1), previous.float().flatten(1)
    change = (current - previous).abs().mean(dim=1)
    return change / previous.abs().mean(dim=1).clamp(min=1e-12)


def select_rows(streams: Streams, rows: torch.Tensor) -> Streams:
    return Streams(*(getattr(streams, f.name)[rows] for f in fields(Streams)))


class StepCache:
    """`model`'s forward for one sampler run of `steps` calls, with the blocks skipped where the signal
    allows. `threshold` > 0. `counts` (if given) is added to. `ready(module)` is called on main block 0
    before its norm reads the signal (a residency streaming the blocks must fetch it first)."""

    def __init__(
        self,
        model: ControlDiT,
        threshold: float,
        steps: int,
        counts: CacheCounts | None = None,
        ready: Callable[[nn.Module], None] | None = None,
    ):
        if not threshold > 0:
            raise ValueError(f"a step cache needs a threshold > 0, got {threshold}; 0 means no cache")
        self.model, self.threshold, self.steps = model, threshold, steps
        self.counts = CacheCounts() if counts is None else counts
        self.ready = ready
        self.index = 0  # calls so far
        self.previous: torch.Tensor | None = None  # last call's modulated video input [B, N, D]
        self.accumulated: torch.Tensor | None = None  # [B] float32, since each branch last ran
        self.residual: torch.Tensor | None = None  # [B, N, D] video tokens after the blocks minus before

    def __call__(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        streams = model.embed(latents, text, timesteps, semantic)
        run = self.decide(self.signal(streams))
        video = self.video_after_blocks(streams, run)
        return model.head(video, streams.temb, latents.shape)

    def signal(self, streams: Streams) -> torch.Tensor:
        """The first main block's timestep-modulated video input [B, N, D]."""
        block = self.model.main.transformer_blocks[0]
        if self.ready is not None:
            self.ready(block)
        return block.norm1(streams.video, streams.words, streams.temb)[0]

    def decide(self, signal: torch.Tensor) -> torch.Tensor:
        """Which branches run the blocks at this call: bool [B] (on the host)."""
        index, self.index = self.index, self.index + 1
        batch = signal.shape[0]
        fresh = self.previous is None or self.previous.shape != signal.shape
        if fresh or index == 0 or index >= self.steps - 1:
            run = torch.ones(batch, dtype=torch.bool)
            self.accumulated = torch.zeros(batch)
        else:
            self.accumulated += relative_change(signal, self.previous).cpu()
            run = self.accumulated >= self.threshold
            self.accumulated[run] = 0.0
        self.previous = signal
        self.counts.calls += batch
        self.counts.skipped += batch - int(run.sum())
        return run

    def video_after_blocks(self, streams: Streams, run: torch.Tensor) -> torch.Tensor:
        """The main stream's video tokens after the blocks: computed for the branches in `run`, the
        cached residual added for the others. A branch that runs gets the blocks' own output (no
        round trip through the residual), so a call where every branch runs is `forward`'s arithmetic."""
        if bool(run.all()):
            video, _ = self.model.run_blocks(streams)
            self.residual = video - streams.video
            return video
        video = streams.video + self.residual
        if bool(run.any()):
            rows = run.nonzero().flatten().to(video.device)
            part = select_rows(streams, rows)
            computed, _ = self.model.run_blocks(part)
            video[rows] = computed
            self.residual[rows] = computed - part.video
        return video
