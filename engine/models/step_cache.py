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
Plain PyTorch, no I/O. On a parallel group (engine.generation.parallel) the model is one rank's share of
the DiT and two injected callables make the ranks agree: `reduce_sums` adds up the signal's sums over the
ranks that share a branch's video tokens, `share_runs` tells each rank every branch's decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol, cast

import torch
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from engine.models.control_dit import Backbone, Streams


@dataclass
class CacheCounts:
    """DiT calls of a job, counted per CFG branch: a sampler step asks for two (uncond and cond)."""

    calls: int = 0  # branch passes asked for
    skipped: int = 0  # of those, answered with the branch's cached residual instead of the blocks


# sums [B, 3] float64 of this rank's tokens -> the same sums over every token of the branch (all ranks)
ReduceSums = Callable[[torch.Tensor], torch.Tensor]


def relative_change(
    current: torch.Tensor, previous: torch.Tensor, reduce_sums: ReduceSums | None = None
) -> torch.Tensor:
    """Per batch row: mean |current - previous| / mean |previous|, float32 [B]. With `reduce_sums` the
    tensors are this rank's share of each row's tokens and the means are over every rank's tokens."""
    if reduce_sums is not None:
        return relative_change_of(reduce_sums(change_sums(current, previous)))
    current, previous = current.float().flatten(1), previous.float().flatten(1)
    change = (current - previous).abs().mean(dim=1)
    return change / previous.abs().mean(dim=1).clamp(min=1e-12)


def change_sums(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per batch row: (sum |current - previous|, sum |previous|, element count), float64 [B, 3].

    The sums are taken in float32 as `relative_change`'s means take them, then widened so that adding
    the ranks' partial sums and counts loses nothing more. What still differs from the single process is
    the summation order (each rank's tokens summed apart, then the partial sums added): a few float32
    ulps of the relative change. A sequence split's latents already differ from the single process's by
    up to 1e-5 relative, which moves the signal more than that; a decision can only flip where the
    accumulated change lands within about 1e-6 of the threshold."""
    current, previous = current.float().flatten(1), previous.float().flatten(1)
    count = torch.full((current.shape[0],), float(current.shape[1]), device=current.device)
    sums = [(current - previous).abs().sum(dim=1), previous.abs().sum(dim=1)]
    return torch.stack([*(s.double() for s in sums), count.double()], dim=1)


def relative_change_of(sums: torch.Tensor) -> torch.Tensor:
    """`change_sums` over every token of each row -> `relative_change`: float32 [B]."""
    change = (sums[:, 0] / sums[:, 2]).float()
    return change / (sums[:, 1] / sums[:, 2]).float().clamp(min=1e-12)


class CachedModel(Protocol):
    """What a StepCache calls: a ControlDiT, or one rank's share of one (see `StepCache`)."""

    main: Backbone

    def embed(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> Streams: ...

    def run_blocks(self, streams: Streams) -> tuple[torch.Tensor, torch.Tensor]: ...

    def head(self, video: torch.Tensor, temb: torch.Tensor, latents_shape: torch.Size) -> torch.Tensor: ...


def select_rows(streams: Streams, rows: torch.Tensor) -> Streams:
    return Streams(*(getattr(streams, f.name)[rows] for f in fields(Streams)))


class StepCache:
    """`model`'s forward for one sampler run of `steps` calls, with the blocks skipped where the signal
    allows. `threshold` > 0. `counts` (if given) is added to. `ready(module)` is called on main block 0
    before its norm reads the signal (a residency streaming the blocks must fetch it first).

    `model` is a ControlDiT, or anything with its `embed`, `run_blocks`, `head` and `main` that computes a
    share of the call (one rank's tokens of one rank's branches). Then `reduce_sums` (see
    `change_sums`) makes every rank holding a share of a branch's tokens see the whole branch's change,
    hence take the same decision, and `share_runs` (this rank's decisions [b] -> the call's [B], every
    branch's) lets the counts cover the branches other ranks hold."""

    def __init__(
        self,
        model: CachedModel,
        threshold: float,
        steps: int,
        counts: CacheCounts | None = None,
        ready: Callable[[nn.Module], None] | None = None,
        reduce_sums: ReduceSums | None = None,
        share_runs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if not threshold > 0:
            raise ValueError(f"a step cache needs a threshold > 0, got {threshold}; 0 means no cache")
        self.model, self.threshold, self.steps = model, threshold, steps
        self.counts = CacheCounts() if counts is None else counts
        self.ready, self.reduce_sums, self.share_runs = ready, reduce_sums, share_runs
        self.index = 0  # calls so far
        self.shape: torch.Size | None = None  # the last call's latents shape
        self.previous: torch.Tensor | None = None  # last call's modulated video input [B, N, D]
        self.accumulated: torch.Tensor | None = None  # [B] float32, since each branch last ran
        self.residual: torch.Tensor | None = None  # [B, N, D] video tokens after the blocks minus before

    def __call__(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        streams = model.embed(latents, text, timesteps, semantic)
        # a new shape starts afresh; the latents' shape, not the signal's, since a rank's share of the
        # tokens may keep its size when the whole changes, and the ranks of a branch must agree
        fresh = self.shape != latents.shape
        self.shape = latents.shape
        run = self.decide(self.signal(streams), fresh)
        video = self.video_after_blocks(streams, run)
        return model.head(video, streams.temb, latents.shape)

    def signal(self, streams: Streams) -> torch.Tensor:
        """The first main block's timestep-modulated video input [B, N, D]."""
        block = cast(CogVideoXBlock, self.model.main.transformer_blocks[0])
        if self.ready is not None:
            self.ready(block)
        return block.norm1(streams.video, streams.words, streams.temb)[0]

    def decide(self, signal: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """Which branches run the blocks at this call: bool [B] (on the host)."""
        index, self.index = self.index, self.index + 1
        batch = signal.shape[0]
        if fresh or self.previous is None or index == 0 or index >= self.steps - 1:
            run = torch.ones(batch, dtype=torch.bool)
            self.accumulated = torch.zeros(batch)
        else:
            assert self.accumulated is not None  # set by the first call, which runs every branch
            self.accumulated += relative_change(signal, self.previous, self.reduce_sums).cpu()
            run = self.accumulated >= self.threshold
            self.accumulated[run] = 0.0
        self.previous = signal
        every = run if self.share_runs is None else self.share_runs(run)
        self.counts.calls += every.numel()
        self.counts.skipped += every.numel() - int(every.sum())
        return run

    def video_after_blocks(self, streams: Streams, run: torch.Tensor) -> torch.Tensor:
        """The main stream's video tokens after the blocks: computed for the branches in `run`, the
        cached residual added for the others. A branch that runs gets the blocks' own output (no
        round trip through the residual), so a call where every branch runs is `forward`'s arithmetic."""
        if bool(run.all()):
            video, _ = self.model.run_blocks(streams)
            self.residual = video - streams.video
            return video
        assert self.residual is not None  # set by the first call, which runs every branch
        video = streams.video + self.residual
        if bool(run.any()):
            rows = run.nonzero().flatten().to(video.device)
            part = select_rows(streams, rows)
            computed, _ = self.model.run_blocks(part)
            video[rows] = computed
            self.residual[rows] = computed - part.video
        return video
