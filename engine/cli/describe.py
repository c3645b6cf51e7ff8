"""How the CLI words a job's length (for `generate` and `submit`); its quality record is worded in
engine/job_words.py, shared with the TUI."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.generation.lengths import ChunkPlan


def describe_length(plan: ChunkPlan) -> str:
    chunks = "1 chunk"
    if plan.chunks > 1:
        chunks = f"{plan.chunks} chunks of {plan.window} latent frames, overlap {plan.overlap}"
    return f"{plan.frames} frames ({plan.seconds:.1f} s at {plan.fps} fps) in {chunks}"
