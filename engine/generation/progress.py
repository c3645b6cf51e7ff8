"""Progress clocks: step callbacks -> progress reports (protocol.ProgressReport) with rates, and the whole
job's time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from engine.generation.lengths import ChunkPlan
from engine.protocol import ChunkTiming, ProgressReport

if TYPE_CHECKING:
    from engine.protocol import Stage


class StageClock:
    """Turns step callbacks into progress reports with a rate and an ETA."""

    def __init__(self, stage: Stage, emit: Callable[[ProgressReport], None] | None, job: JobClock):
        self.stage, self.emit, self.job, self.started = stage, emit, job, time.perf_counter()

    def __call__(self, step: int, total: int) -> None:
        if self.emit is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = step / elapsed
        eta = (total - step) / rate if rate > 0 else None
        job = self.job
        self.emit(
            ProgressReport(
                stage=self.stage,
                step=step,
                total=total,
                chunk=job.chunk + 1,
                chunks=job.plan.chunks,
                rate=rate,
                eta_s=eta,
                frames_written=job.frames_written,
                video_seconds=job.frames_written / job.plan.fps,
                job_eta_s=job.eta(self.stage, step, total, eta),
                dit_calls=job.dit_calls,
                cache_skips=job.dit_calls_skipped,
            )
        )

    def seconds(self) -> float:
        return time.perf_counter() - self.started


class JobClock:
    """Where a job stands (chunk, frames on disk) and an estimate of the time it has left.

    Stage 2's costs are learned as the job runs (seconds per denoising step, per chunk's decode and
    write); before the first measurement they come from the pipeline's previous job, if any.
    """

    def __init__(self, plan: ChunkPlan, steps: int, learned: dict[str, float]):
        self.plan, self.steps, self.learned = plan, steps, learned
        self.chunk, self.frames_written = 0, 0  # the chunk being made (0-based), frames on disk
        self.finished = 0  # chunks in the video file
        self.chunk_timings: list[ChunkTiming] = []
        self.thumbnail: np.ndarray | None = None  # the middle frame of chunk 0
        self.denoise_s = 0.0
        self.denoise_steps = 0
        self.finish_s: list[float] = []  # decode + write of each finished chunk
        self.dit_calls = 0  # so far, one per CFG branch and denoising step
        self.dit_calls_skipped = 0  # of those, answered by the step cache

    def step_seconds(self) -> float | None:
        if self.denoise_steps:
            return self.denoise_s / self.denoise_steps
        return self.learned.get("denoise_step_s")

    def finish_seconds(self) -> float | None:
        if self.finish_s:
            return sum(self.finish_s) / len(self.finish_s)
        return self.learned.get("chunk_finish_s")

    def eta(self, stage: str, step: int, total: int, stage_eta: float | None) -> float | None:
        """Seconds the whole job has left: None until a denoising step has been timed (here or before)."""
        per_step = self.step_seconds()
        if per_step is None:
            return None
        per_finish = self.finish_seconds() or 0.0  # unknown until a chunk was decoded: counted as free
        chunk_cost = self.steps * per_step + per_finish
        if stage in ("text", "tokens"):
            return (stage_eta or 0.0) + self.plan.chunks * chunk_cost
        after = self.plan.chunks - self.chunk - 1  # chunks after the current one
        if stage == "denoise":
            return (self.steps - step) * per_step + per_finish + after * chunk_cost
        return (stage_eta or 0.0) + after * chunk_cost
