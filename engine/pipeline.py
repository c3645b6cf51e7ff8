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

import numpy as np
import torch

from . import __version__
from .atomic import write_atomically
from .checksums import file_checksums
from .models.dpm_sampler import DiffusionCancelled
from .models.llm_sampler import SamplingCancelled, SamplingParams
from .specs import ModelSpec
from .stage1 import SemanticStage, default_device, default_dtype
from .stage2 import VideoStage
from .video import write_mp4, write_thumbnail
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

    def sampling(self, spec: ModelSpec) -> SamplingParams:
        return SamplingParams(
            cfg=self.cfg,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            motion_score=self.motion_score,
            num_frames=spec.llm.frames_per_segment,
            seed=self.seed,
        )

    def validate(self, spec: ModelSpec) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt must not be empty: describe the video to generate")
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
    """One progress report: `stage` is tokens, denoise, decode or write."""

    stage: str
    step: int
    total: int
    rate: float  # steps per second in this stage so far
    eta_s: float | None


@dataclass
class JobResult:
    video: Path
    tokens: Path
    sidecar: Path
    thumbnail: Path
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0


class JobCancelled(Exception):
    """The job was cancelled between two steps; nothing was written."""


class StageClock:
    """Turns step callbacks into Progress events with a rate and an ETA."""

    def __init__(self, stage: str, emit: Callable[[Progress], None] | None):
        self.stage, self.emit, self.started = stage, emit, time.perf_counter()

    def __call__(self, step: int, total: int) -> None:
        if self.emit is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = step / elapsed
        self.emit(Progress(self.stage, step, total, rate, (total - step) / rate if rate > 0 else None))

    def seconds(self) -> float:
        return time.perf_counter() - self.started


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
    ) -> JobResult:
        job.validate(self.spec)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings: dict[str, float] = {}
        tokens_path = job.out.with_suffix(".npy")
        thumbnail_path = job.out.with_suffix(".png")

        def stop() -> bool:
            return should_stop is not None and should_stop()

        try:
            if job.tokens is not None:
                codes = load_tokens(job.tokens)
            else:
                clock = StageClock("tokens", on_progress)
                codes = self.stage1().codes(
                    job.prompt, job.sampling(self.spec), on_token=clock, should_stop=stop
                )
                timings["tokens"] = clock.seconds()
            stage2 = self.stage2()
            stage2.check_codes(codes)
            clock = StageClock("denoise", on_progress)
            latents = stage2.latents(
                job.prompt, codes, seed=job.seed, steps=job.steps, on_step=clock, should_stop=stop
            )
            timings["denoise"] = clock.seconds()
        except (SamplingCancelled, DiffusionCancelled) as error:
            raise JobCancelled(str(error)) from error
        if stop():
            raise JobCancelled("cancelled before decoding")
        clock = StageClock("decode", on_progress)
        frames = stage2.frames(latents)
        clock(1, 1)
        timings["decode"] = clock.seconds()
        clock = StageClock("write", on_progress)
        save_tokens(codes.numpy(), tokens_path)
        write_mp4(frames.numpy(), job.out, self.spec.fps)
        write_thumbnail(frames[frames.shape[0] // 2].numpy(), thumbnail_path)
        clock(1, 1)
        timings["write"] = clock.seconds()
        sidecar = job.out.with_suffix(".json")
        result = JobResult(job.out, tokens_path, sidecar, thumbnail_path, timings, peak_memory(self.device))
        try:
            self.write_sidecar(job, result, frames.shape)
        except BaseException:
            job.out.unlink(missing_ok=True)  # a video without its record would not be reproducible
            tokens_path.unlink(missing_ok=True)
            thumbnail_path.unlink(missing_ok=True)
            raise
        return result

    def write_sidecar(self, job: JobSpec, result: JobResult, shape: torch.Size) -> None:
        record = {
            "engine_version": __version__,
            "model": self.spec.name,
            "job": {
                key: str(value) if isinstance(value, Path) else value for key, value in asdict(job).items()
            },
            "video": {"frames": shape[0], "height": shape[1], "width": shape[2], "fps": self.spec.fps},
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
