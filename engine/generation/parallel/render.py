"""Rank 0 and the helpers render the same chunks, step for step: rank 0 sends the job's stage-2 inputs
(prompt states, semantic tokens, chunk plan, seed, steps, step-cache threshold, and for a resumed render
where it starts), each helper runs the same `render_chunks` on them and throws its latents away; only
rank 0 decodes and writes."""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch

from engine.generation.cursor import RenderCursor
from engine.generation.lengths import ChunkPlan
from engine.generation.parallel.group import EXIT, RENDER, STOP, ParallelGroup, RankLost
from engine.models.dpm_sampler import DiffusionCancelled

log = logging.getLogger(__name__)


def lead_render(
    group: ParallelGroup,
    text: torch.Tensor,
    codes: torch.Tensor,
    plan: ChunkPlan,
    seed: int,
    steps: int,
    cache: float = 0.0,
    cursor: RenderCursor | None = None,
) -> None:
    """Rank 0: start the helpers on the render that rank 0 is about to do (`cache`: the step cache's
    threshold, 0 for none; `cursor`: a resumed render's start)."""
    start = 0 if cursor is None else cursor.index
    header = {"plan": asdict(plan), "seed": seed, "steps": steps, "cache": cache, "start": start}
    tensors = [text, codes]
    if cursor is not None and cursor.generator is not None:
        header["resumed"] = {"prefix": cursor.prefix is not None}
        tensors += [cursor.generator, *([] if cursor.prefix is None else [cursor.prefix])]
    group.lead(header, tensors, (plan.chunks - start) * steps)


def follow_renders(stage, group: ParallelGroup) -> None:
    """A helper: render what rank 0 renders until it says EXIT (`stage`: a VideoStage in this group)."""
    while True:
        command = group.command()
        if command == EXIT:
            return
        if command == STOP:  # rank 0 closing a render this rank had already finished
            continue
        if command != RENDER:
            raise RankLost(f"rank {group.rank}: unknown command {command} from rank 0")
        header, (text, codes, *resumed) = group.receive()
        plan = ChunkPlan(**header["plan"])
        cursor = None
        if "resumed" in header:
            prefix = resumed[1] if header["resumed"]["prefix"] else None
            cursor = RenderCursor(header["start"], resumed[0].cpu(), prefix)
        try:
            for _ in stage.render_chunks(
                text,
                codes.cpu(),
                plan,
                seed=header["seed"],
                steps=header["steps"],
                should_stop=None,
                cache=header["cache"],
                cursor=cursor,
            ):
                pass
        except DiffusionCancelled as stopped:
            log.info("rank %d: render stopped with rank 0's (%s)", group.rank, stopped)
