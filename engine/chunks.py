"""Long videos in the engine: the length rules of a model spec (see engine/lengths.py for the plan)."""

from __future__ import annotations

from typing import Any

from . import lengths
from .lengths import ChunkPlan, LengthRules
from .models.llm_sampler import max_segments
from .specs import ModelSpec


def rules_from_spec(spec: ModelSpec) -> LengthRules:
    return LengthRules(
        model=spec.name,
        window=spec.llm.frames_per_segment,
        time_factor=spec.vae.temporal_compression,
        fps=spec.fps,
        default_overlap=spec.default_overlap,
        max_segments=max_segments(spec.llm),
    )


def plan_length(spec: ModelSpec, frames: int | None = None, overlap: int | None = None) -> ChunkPlan:
    return lengths.plan_length(rules_from_spec(spec), frames, overlap)


def limits(spec: ModelSpec, overlap: int | None = None) -> dict[str, Any]:
    return lengths.limits(rules_from_spec(spec), overlap)


def frames_for_seconds(spec: ModelSpec, seconds: float) -> int:
    return lengths.frames_for_seconds(rules_from_spec(spec), seconds)
