"""What a job is and what it gives back: its parameters, progress reports, finished chunks, the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from engine.generation.interpolate import interpolation_factor
from engine.generation.lengths import ChunkPlan, plan_length, rules_for
from engine.models.llm_sampler import SamplingParams
from engine.params import PARAMS, Param, check_params
from engine.protocol import ChunkReport, ChunkTiming, JobOutcome, ProgressReport
from engine.specs import ModelSpec

if TYPE_CHECKING:
    from typing_extensions import Self


class JobRules:
    """What a job does with its parameters; `JobSpec` adds the fields, one per schema parameter."""

    prompt: str
    out: Path
    tokens: Path | None
    seed: int
    steps: int
    cache: float
    frames: int | None
    overlap: int | None
    fps: int

    if TYPE_CHECKING:

        def __init__(self, prompt: str, out: Path, **params: Any) -> None: ...

    @classmethod
    def from_params(cls, values: Mapping[str, Any], out: Path, tokens: Path | None = None) -> Self:
        """A job from wire or command-line parameters: checked, normalised, defaults filled."""
        return cls(**check_params(values), out=out, tokens=tokens)

    def params(self) -> dict[str, Any]:
        """The schema's parameters of this job, by name."""
        return {p.name: getattr(self, p.name) for p in PARAMS}

    def plan(self, spec: ModelSpec) -> ChunkPlan:
        return plan_length(rules_for(spec.name), self.frames, self.overlap)

    def sampling(self, spec: ModelSpec) -> SamplingParams:
        return sampling_params(self.params(), self.plan(spec))

    def validate(self, spec: ModelSpec) -> None:
        check_params(self.params())  # types and ranges; the model's limits follow
        self.plan(spec)
        self.sampling(spec).validate(spec.llm)
        interpolation_factor(self.fps, spec.fps)
        if self.out.suffix.lower() != ".mp4":
            raise ValueError(f"--out must name an .mp4 file, got {self.out}")
        if self.tokens is not None and not self.tokens.is_file():
            raise ValueError(
                f"--tokens {self.tokens} does not exist: pass the .npy saved beside an earlier video"
            )


def sampling_params(values: Mapping[str, Any], plan: ChunkPlan) -> SamplingParams:
    """Stage 1's knobs: the job parameters SamplingParams has, and the plan's semantic frames."""
    knobs = {name for name in SamplingParams.__dataclass_fields__ if name != "num_frames"}
    chosen = {name: value for name, value in values.items() if name in knobs}
    return SamplingParams(**chosen, num_frames=plan.semantic_frames)


def job_spec_class(params: Sequence[Param] | None = None) -> type:
    """The JobSpec dataclass for a schema: the required parameters (the prompt), `out`, the others with
    their defaults, then `tokens` (reuse saved semantic tokens: stage 2 only). Frozen: re-running a job
    reproduces the video on the same device. The sidecar records every field."""
    params = PARAMS if params is None else params
    required = [(p.name, p.kind) for p in params if p.required]
    optional = [
        (p.name, p.kind | None if p.optional else p.kind, field(default=p.default))
        for p in params
        if not p.required
    ]
    spec = make_dataclass(
        "JobSpec",
        [*required, ("out", Path), *optional, ("tokens", Path | None, field(default=None))],
        bases=(JobRules,),
        frozen=True,
    )
    spec.__module__ = __name__  # so that it pickles and prints as engine.generation.job.JobSpec
    return spec


if TYPE_CHECKING:

    class JobSpec(JobRules):
        """`job_spec_class()`'s dataclass as mypy sees it: the fields JobRules declares."""

        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

else:
    JobSpec = job_spec_class()


# A progress report is the wire's model itself (the job_progress event less the job's id): a field added
# there is one the pipeline fills and every client gets.
Progress = ProgressReport


@dataclass(frozen=True)
class ChunkDone:
    """A chunk whose frames are in the video file. `report` is what the wire says of it (a chunk_finished
    event less the job's id and the files the engine makes of it), `timing` what the job's record keeps of
    it; the rest stays in the process. Frame counts and `frames` are the model's (at its fps, as the
    `frames` parameter); `video_frames` are what the chunk added to the file at the job's fps (the same
    array when that is the model's)."""

    report: ChunkReport
    timing: ChunkTiming
    frames: np.ndarray  # the model's frames this chunk added to the video, uint8 [n, H, W, 3]
    partial_video: Path  # the growing file (renamed to the job's `out` at the end)
    video_frames: np.ndarray | None = None  # uint8 [m, H, W, 3]; None: `frames`

    @property
    def preview(self) -> np.ndarray:
        """The chunk's last frame, uint8 [H, W, 3]."""
        return self.frames[-1]


@dataclass
class JobResult:
    """What a finished (or partly finished, then cancelled) job made. Its `outcome()` is the record the
    engine's job row, the job's summary and the sidecar beside the video all hold; the rest (frames,
    chunks, interpolation...) the sidecar records in blocks of its own (Pipeline.sidecar_record)."""

    video: Path
    tokens: Path
    sidecar: Path
    thumbnail: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    frames: int = 0
    fps: int = field(kw_only=True)  # the video file's; `frames` counts the model's frames, at the model's fps
    video_frames: int = 0  # in the file, at `fps`
    interpolation: dict[str, Any] | None = None  # how the frames between the model's were made, if any
    chunks_done: int = 0
    chunks: int = 1
    chunk_timings: list[ChunkTiming] = field(default_factory=list)
    length: dict[str, Any] = field(default_factory=dict)
    partial: bool = False  # cancelled after some chunks: the video holds only those
    weights_sha256: dict[str, str] = field(default_factory=dict)  # {file under the weights root: SHA-256}
    dit_calls: int = 0  # of the chunks kept: one per CFG branch and denoising step
    dit_calls_skipped: int = 0  # of those, answered by the step cache instead of the blocks
    resumes: list[int] = field(default_factory=list)  # chunks done when each resume began (none: one go)

    def outcome(self) -> JobOutcome:
        """The result as its store row, its summary and its sidecar name it."""
        return JobOutcome(
            video_path=str(self.video),
            tokens_path=str(self.tokens),
            sidecar_path=str(self.sidecar),
            thumbnail_path=str(self.thumbnail),
            timings=self.timings_s,
            peak_memory_bytes=self.peak_memory_bytes,
            weights_sha256=self.weights_sha256,
            chunk_timings=self.chunk_timings,
        )


class JobCancelled(Exception):
    """The job was cancelled between two steps. `partial` is the result holding the chunks finished
    before the cancel (a shorter, playable video), or None when none was and nothing was written."""

    def __init__(self, message: str, partial: JobResult | None = None):
        super().__init__(message)
        self.partial = partial


class JobSuspended(JobCancelled):
    """The job was stopped after `chunks_done` of its `chunks` chunks by an engine that is stopping: its
    partial video and resume checkpoint stay in its folder for the next engine to continue from
    (engine/generation/resume.py); nothing was renamed into place."""

    def __init__(self, message: str, chunks_done: int, chunks: int):
        super().__init__(message)
        self.chunks_done, self.chunks = chunks_done, chunks
