"""What a job is and what it gives back: its parameters, progress reports, finished chunks, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.generation.lengths import ChunkPlan, plan_length, rules_for
from engine.models.llm_sampler import SamplingParams
from engine.specs import ModelSpec


@dataclass(frozen=True)
class JobSpec:
    """Everything that defines one generation; re-running it reproduces the video on the same device."""

    prompt: str
    out: Path
    seed: int = 42
    cfg: float = 7.5
    motion_score: float = 0.1
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    steps: int = 50
    tokens: Path | None = None  # reuse saved semantic tokens: stage 2 only
    frames: int | None = None  # RGB frames of the video; None: one clip (49 frames for the release)
    overlap: int | None = None  # latent frames a chunk shares with the one before; None: the spec's

    def plan(self, spec: ModelSpec) -> ChunkPlan:
        return plan_length(rules_for(spec.name), self.frames, self.overlap)

    def sampling(self, spec: ModelSpec) -> SamplingParams:
        return SamplingParams(
            cfg=self.cfg,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            motion_score=self.motion_score,
            num_frames=self.plan(spec).semantic_frames,
            seed=self.seed,
        )

    def validate(self, spec: ModelSpec) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt must not be empty: describe the video to generate")
        self.plan(spec)
        self.sampling(spec).validate(spec.llm)
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.out.suffix.lower() != ".mp4":
            raise ValueError(f"--out must name an .mp4 file, got {self.out}")
        if self.tokens is not None and not self.tokens.is_file():
            raise ValueError(
                f"--tokens {self.tokens} does not exist: pass the .npy saved beside an earlier video"
            )


@dataclass(frozen=True)
class Progress:
    """One progress report: `stage` is text, tokens, denoise, decode or write.

    step/total count inside the stage (for denoise: inside the current chunk); chunk/chunks are
    1-based; frames_written and video_seconds say how much video is on disk; job_eta_s estimates
    the whole job's remaining time (None until there is something to estimate it from).
    """

    stage: str
    step: int
    total: int
    rate: float  # steps per second in this stage so far
    eta_s: float | None
    chunk: int = 1
    chunks: int = 1
    frames_written: int = 0
    video_seconds: float = 0.0
    job_eta_s: float | None = None


@dataclass(frozen=True)
class ChunkDone:
    """A chunk whose frames are in the video file: index is 0-based, the frame range inclusive."""

    index: int
    chunks: int
    first_frame: int
    last_frame: int
    frames_written: int
    video_seconds: float
    timings_s: dict[str, float]
    frames: np.ndarray  # the frames this chunk added to the video, uint8 [n, H, W, 3]
    partial_video: Path  # the growing file (renamed to the job's `out` at the end)

    @property
    def preview(self) -> np.ndarray:
        """The chunk's last frame, uint8 [H, W, 3]."""
        return self.frames[-1]


@dataclass
class JobResult:
    video: Path
    tokens: Path
    sidecar: Path
    thumbnail: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    frames: int = 0
    chunks_done: int = 0
    chunks: int = 1
    chunk_timings: list[dict[str, Any]] = field(default_factory=list)
    length: dict[str, Any] = field(default_factory=dict)
    partial: bool = False  # cancelled after some chunks: the video holds only those


class JobCancelled(Exception):
    """The job was cancelled between two steps. `partial` is the result holding the chunks finished
    before the cancel (a shorter, playable video), or None when none was and nothing was written."""

    def __init__(self, message: str, partial: JobResult | None = None):
        super().__init__(message)
        self.partial = partial
