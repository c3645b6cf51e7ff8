"""The two-stage generation, end to end: prompt -> tokens -> latents -> frames -> mp4.

One `Pipeline` keeps its models loaded between jobs (loaded on first use). A job reports
typed progress events and honours a cancellation check; its outputs are written under
temporary names and renamed when complete, so no half-written file is ever left behind.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .atomic import write_atomically
from .checksums import file_checksums
from .chunks import ChunkPlan, plan_length
from .models.dpm_sampler import DiffusionCancelled
from .models.llm_sampler import SamplingCancelled, SamplingParams
from .specs import ModelSpec
from .stage1 import SemanticStage, default_device, default_dtype
from .stage2 import VideoStage
from .video import StreamingMp4Writer, write_thumbnail
from .weights import ReleaseLayout


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
        return plan_length(spec, self.frames, self.overlap)

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
    preview: np.ndarray  # the chunk's last frame, uint8 [H, W, 3]
    partial_video: Path  # the growing file (renamed to the job's `out` at the end)


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


class StageClock:
    """Turns step callbacks into Progress events with a rate and an ETA."""

    def __init__(self, stage: str, emit: Callable[[Progress], None] | None, job: JobClock | None = None):
        self.stage, self.emit, self.job, self.started = stage, emit, job, time.perf_counter()

    def __call__(self, step: int, total: int) -> None:
        if self.emit is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = step / elapsed
        eta = (total - step) / rate if rate > 0 else None
        if self.job is None:
            self.emit(Progress(self.stage, step, total, rate, eta))
            return
        job = self.job
        self.emit(
            Progress(
                self.stage,
                step,
                total,
                rate,
                eta,
                chunk=job.chunk + 1,
                chunks=job.plan.chunks,
                frames_written=job.frames_written,
                video_seconds=job.frames_written / job.plan.fps,
                job_eta_s=job.eta(self.stage, step, total, eta),
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
        self.chunk_timings: list[dict[str, Any]] = []
        self.thumbnail: np.ndarray | None = None  # the middle frame of chunk 0
        self.denoise_s = 0.0
        self.denoise_steps = 0
        self.finish_s: list[float] = []  # decode + write of each finished chunk

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


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def save_tokens(codes: np.ndarray, path: Path) -> None:
    write_atomically(path, lambda partial: np.save(partial, codes))


def load_tokens(path: Path) -> torch.Tensor:
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"--tokens {path} is not a saved token array ({error})") from None
    if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"--tokens {path} should hold a 1-D integer array, found {codes.dtype} {list(codes.shape)}"
        )
    return torch.from_numpy(codes.astype(np.int64))


MEMORY_PROFILES = ("auto", "resident", "offload")
RESIDENT_MIN_GPU_BYTES = 48 * 2**30  # both stages of the release in bf16 take about 30 GiB


def resolve_memory_profile(profile: str, device: torch.device) -> str:
    """`resident` keeps every model on the device; `offload` keeps only the running stage there."""
    if profile not in MEMORY_PROFILES:
        raise ValueError(f"memory profile must be one of {', '.join(MEMORY_PROFILES)}, got {profile!r}")
    if device.type != "cuda":
        return "resident"
    if profile == "auto":
        total = torch.cuda.get_device_properties(device).total_memory
        return "resident" if total >= RESIDENT_MIN_GPU_BYTES else "offload"
    return profile


class Pipeline:
    def __init__(
        self,
        spec: ModelSpec,
        layout: ReleaseLayout,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        memory: str = "auto",
    ):
        self.spec, self.layout = spec, layout
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.memory = resolve_memory_profile(memory, self.device)
        self.parking = self.device if self.memory == "resident" else torch.device("cpu")
        self._stage1: SemanticStage | None = None
        self._stage2: VideoStage | None = None
        self.learned: dict[str, float] = {}  # stage-2 costs of the last job, for the next one's ETA

    def stage1(self) -> SemanticStage:
        if self._stage1 is None:
            self._stage1 = SemanticStage.load(self.spec, self.layout, self.parking, self.dtype)
        return self._stage1

    def stage2(self) -> VideoStage:
        if self._stage2 is None:
            self._stage2 = VideoStage.load(self.spec, self.layout, self.parking, self.dtype)
        return self._stage2

    def active(self, stage):
        """Move a stage onto the device for its work (a no-op when everything is resident)."""
        return stage.to(self.device) if self.memory == "offload" else stage

    def park(self, stage) -> None:
        if self.memory == "offload":
            stage.to(self.parking)
            torch.cuda.empty_cache()

    def run(
        self,
        job: JobSpec,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_chunk: Callable[[ChunkDone], None] | None = None,
    ) -> JobResult:
        """Run one job: tokens, then chunk after chunk denoised, decoded and appended to the mp4.

        A cancel after some chunks finished raises JobCancelled whose `partial` result points at a
        shorter video of those chunks (renamed into place, with its tokens, thumbnail and record).
        """
        job.validate(self.spec)
        plan = job.plan(self.spec)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings: dict[str, float] = {}
        clock = JobClock(plan, job.steps, self.learned)
        text_steps = 1 if job.tokens is not None else 2
        text_clock = StageClock("text", on_progress, clock)

        def stop() -> bool:
            return should_stop is not None and should_stop()

        try:
            if job.tokens is not None:
                codes = load_tokens(job.tokens)
            else:
                token_clock = StageClock("tokens", on_progress, clock)

                def text_done() -> None:
                    timings["text"] = text_clock.seconds()
                    text_clock(1, text_steps)
                    token_clock.started = time.perf_counter()

                stage1 = self.active(self.stage1())
                try:
                    codes = stage1.codes(
                        job.prompt,
                        job.sampling(self.spec),
                        on_token=token_clock,
                        should_stop=stop,
                        on_text=text_done,
                    )
                finally:
                    self.park(stage1)
                timings["tokens"] = token_clock.seconds()
        except SamplingCancelled as error:
            raise JobCancelled(str(error)) from error
        stage2 = self.stage2()
        stage2.check_codes(codes, plan.segments)
        stage2 = self.active(stage2)
        try:
            started = time.perf_counter()
            text = stage2.encode_prompt(job.prompt)
            timings["text"] = timings.get("text", 0.0) + time.perf_counter() - started
            text_clock(text_steps, text_steps)
            return self._render_and_finish(
                job, plan, stage2, text, codes, clock, timings, on_progress, stop, on_chunk
            )
        finally:
            self.park(stage2)

    def _render_and_finish(
        self,
        job: JobSpec,
        plan: ChunkPlan,
        stage2: VideoStage,
        text: torch.Tensor,
        codes: torch.Tensor,
        clock: JobClock,
        timings: dict[str, float],
        on_progress: Callable[[Progress], None] | None,
        stop: Callable[[], bool],
        on_chunk: Callable[[ChunkDone], None] | None,
    ) -> JobResult:
        writer = StreamingMp4Writer(job.out, self.spec.fps)
        try:
            self._render(job, plan, stage2, text, codes, writer, clock, timings, on_progress, stop, on_chunk)
        except DiffusionCancelled as error:
            if not clock.finished:
                writer.abort()
                raise JobCancelled(str(error)) from error
            result = self._finish(job, plan, codes, writer, clock, timings, partial=True)
            raise JobCancelled(f"{error}; kept the {clock.finished} finished chunk(s)", result) from error
        except BaseException:
            writer.abort()
            raise
        return self._finish(job, plan, codes, writer, clock, timings, partial=False)

    def _render(
        self,
        job: JobSpec,
        plan: ChunkPlan,
        stage2: VideoStage,
        text: torch.Tensor,
        codes: torch.Tensor,
        writer: StreamingMp4Writer,
        clock: JobClock,
        timings: dict[str, float],
        on_progress: Callable[[Progress], None] | None,
        stop: Callable[[], bool],
        on_chunk: Callable[[ChunkDone], None] | None,
    ) -> None:
        decoder = stage2.video_decoder()
        denoise = StageClock("denoise", on_progress, clock)
        step_started = [time.perf_counter()]

        def on_step(index: int, step: int, total: int) -> None:
            now = time.perf_counter()
            clock.denoise_s += now - step_started[0]
            clock.denoise_steps += 1
            step_started[0] = now
            denoise(step, total)

        chunks = stage2.render_chunks(
            text, codes, plan, seed=job.seed, steps=job.steps, on_step=on_step, should_stop=stop
        )
        for index in range(plan.chunks):
            clock.chunk = index
            denoise.started = step_started[0] = started = time.perf_counter()
            latents = next(chunks)
            denoised = time.perf_counter()
            if stop():
                raise DiffusionCancelled(f"stopped after denoising chunk {index + 1} of {plan.chunks}")
            decode = StageClock("decode", on_progress, clock)
            new = latents if index == 0 else latents[:, plan.overlap :]
            frames = stage2.frames(decoder, new).numpy()
            del latents, new
            decode(1, 1)
            decoded = time.perf_counter()
            write = StageClock("write", on_progress, clock)
            first = writer.frames_written
            writer.append(frames)
            if index == 0:
                clock.thumbnail = frames[frames.shape[0] // 2].copy()
            clock.frames_written = writer.frames_written
            write(1, 1)
            written = time.perf_counter()
            clock.finish_s.append(written - denoised)
            entry = {
                "index": index,
                "first_frame": first,
                "last_frame": writer.frames_written - 1,
                "denoise_s": round(denoised - started, 4),
                "decode_s": round(decoded - denoised, 4),
                "write_s": round(written - decoded, 4),
            }
            clock.chunk_timings.append(entry)
            for stage, key in (("denoise", "denoise_s"), ("decode", "decode_s"), ("write", "write_s")):
                timings[stage] = timings.get(stage, 0.0) + entry[key]
            self.learned["denoise_step_s"] = clock.step_seconds() or 0.0
            self.learned["chunk_finish_s"] = clock.finish_seconds() or 0.0
            clock.finished = index + 1
            if on_chunk is not None:
                on_chunk(
                    ChunkDone(
                        index=index,
                        chunks=plan.chunks,
                        first_frame=first,
                        last_frame=writer.frames_written - 1,
                        frames_written=writer.frames_written,
                        video_seconds=writer.seconds,
                        timings_s={k: entry[k] for k in ("denoise_s", "decode_s", "write_s")},
                        preview=frames[-1],
                        partial_video=writer.partial,
                    )
                )
            del frames
        chunks.close()

    def _finish(
        self,
        job: JobSpec,
        plan: ChunkPlan,
        codes: torch.Tensor,
        writer: StreamingMp4Writer,
        clock: JobClock,
        timings: dict[str, float],
        partial: bool,
    ) -> JobResult:
        tokens_path = job.out.with_suffix(".npy")
        thumbnail_path = job.out.with_suffix(".png")
        sidecar = job.out.with_suffix(".json")
        try:
            save_tokens(codes.numpy(), tokens_path)
            write_thumbnail(clock.thumbnail, thumbnail_path)
            writer.finish()
            done = len(clock.chunk_timings)
            result = JobResult(
                job.out,
                tokens_path,
                sidecar,
                thumbnail_path,
                {stage: round(seconds, 4) for stage, seconds in timings.items()},
                peak_memory(self.device),
                frames=writer.frames_written,
                chunks_done=done,
                chunks=plan.chunks,
                chunk_timings=list(clock.chunk_timings),
                length=plan.record(),
                partial=partial,
            )
            height, width = clock.thumbnail.shape[:2]
            self.write_sidecar(job, result, (writer.frames_written, height, width))
        except BaseException:
            writer.abort()
            for path in (
                job.out,
                tokens_path,
                thumbnail_path,
            ):  # a video without its record is not reproducible
                path.unlink(missing_ok=True)
            raise
        return result

    def write_sidecar(self, job: JobSpec, result: JobResult, shape: tuple[int, int, int]) -> None:
        record = {
            "engine_version": __version__,
            "model": self.spec.name,
            "job": {
                key: str(value) if isinstance(value, Path) else value for key, value in asdict(job).items()
            },
            "status": "cancelled_partial" if result.partial else "finished",
            "video": {"frames": shape[0], "height": shape[1], "width": shape[2], "fps": self.spec.fps},
            "length": result.length,
            "chunks": {
                "done": result.chunks_done,
                "planned": result.chunks,
                "timings_s": result.chunk_timings,
            },
            "tokens": str(result.tokens),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "timings_s": result.timings_s,
            "peak_memory_bytes": result.peak_memory_bytes,
            "weights_sha256": file_checksums(self.layout),
        }
        write_atomically(
            result.sidecar, lambda partial: partial.write_text(json.dumps(record, indent=2) + "\n")
        )
