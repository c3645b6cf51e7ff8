"""The two-stage generation, end to end: prompt -> tokens -> latents -> frames -> mp4.

One `Pipeline` keeps its models loaded between jobs (loaded on first use). A job reports
typed progress events and honours a cancellation check; its outputs are written under
temporary names and renamed when complete, so no half-written file is ever left behind.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine import __version__
from engine.generation.cursor import RenderCursor
from engine.generation.interpolate import InterpolatingWriter
from engine.generation.job import ChunkDone, JobCancelled, JobResult, JobSpec, JobSuspended
from engine.generation.lengths import ChunkPlan
from engine.generation.memory import resolve_memory_profile, spec_weight_sizes
from engine.generation.outputs import load_tokens, peak_memory, save_tokens, write_record
from engine.generation.progress import JobClock, StageClock, prior_costs
from engine.generation.residency import Residency
from engine.generation.resume import Checkpoint, Checkpoints, CheckpointWriter, fingerprint, frames_sha256
from engine.generation.run_record import environment, record_hashes
from engine.generation.speed import DiTOptions, enable_compile_cache
from engine.generation.stage1 import SemanticStage, default_device, default_dtype
from engine.generation.stage2 import VideoStage
from engine.generation.video import write_thumbnail
from engine.models.dpm_sampler import DiffusionCancelled
from engine.models.llm_sampler import Decoding, SamplingCancelled
from engine.models.step_cache import CacheCounts
from engine.protocol import ChunkReport, ChunkTiming, ProgressReport
from engine.specs import ModelSpec, get_spec
from engine.weights.checksums import file_checksums
from engine.weights.layout import ReleaseLayout, layout_for
from engine.weights.tiny import ensure_tiny_release

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


@dataclass
class Render:
    """One job's stage-2 work: what it renders from and reports to (the helpers below share it)."""

    job: JobSpec
    plan: ChunkPlan
    stage2: VideoStage
    text: torch.Tensor
    codes: torch.Tensor
    clock: JobClock
    timings: dict[str, float]
    on_progress: Callable[[ProgressReport], None] | None
    stop: Callable[[], bool]
    on_chunk: Callable[[ChunkDone], None] | None
    stage1: dict[str, Any]  # where its tokens were made (the sidecar's "stage1")
    checkpoints: Checkpoints | None = None  # an engine job's: checkpointed after each chunk, maybe resumed
    saving: CheckpointWriter | None = None
    frames_sha256: list[str] = field(default_factory=list)  # each chunk's frames', for the record's `hashes`


@dataclass
class SemanticTokens:
    """Stage 1's result for one job: its codes, what the stage cost, and where and when it ran."""

    codes: torch.Tensor
    timings: dict[str, float]  # "text" (the flan-T5 half), "tokens" and its "tokens_compile" if any
    device: str
    finished_at: float  # Unix time
    decoding: str | None = None  # how the tokens were decoded: llm_sampler.GRAPH, or "eager: " and why

    def record(self, ahead: bool = True) -> dict[str, Any]:
        """The sidecar's "stage1": where and how the tokens were made (`ahead`: by an LLM lane)."""
        record: dict[str, Any] = {"device": self.device, "ahead": ahead, "decoding": self.decoding}
        if ahead:
            record["finished_at"] = round(self.finished_at, 3)
        return record


class Pipeline:
    def __init__(
        self,
        spec: ModelSpec,
        layout: ReleaseLayout,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        memory: str = "auto",
        dit: DiTOptions | None = None,
    ):
        """`memory`: auto, resident, balanced, low (offload: balanced); `dit`: the DiT's attention kernel,
        torch.compile (of the DiT's blocks and the language model's decoding step) and fused q/k/v
        (engine-wide; default: auto, both on for CUDA only)."""
        self.spec, self.layout = spec, layout
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.dit = (dit or DiTOptions()).resolved(self.device, self.dtype)
        on_gpu = self.device.type == "cuda"
        sizes = spec_weight_sizes(spec, self.dtype) if memory == "auto" and on_gpu else None
        self.memory_choice = resolve_memory_profile(memory, self.device, sizes)
        self.memory = self.memory_choice.profile
        log.info("memory profile %s (%s)", self.memory, self.memory_choice.reason)
        self.parking = self.device if self.memory == "resident" else torch.device("cpu")
        self.residency = (
            None if self.memory == "resident" else Residency(self.device, overlap=self.memory_choice.prefetch)
        )
        self._stage1: SemanticStage | None = None
        self._stage2: VideoStage | None = None
        # the ETA's costs (progress.JobClock): the history's of this model on this device, then the last job's
        self.learned: dict[str, float] = prior_costs(spec.name, str(self.device))

    @classmethod
    def for_model(
        cls,
        model: str,
        root: Path | None = None,
        device: torch.device | None = None,
        memory: str = "auto",
        dit: DiTOptions | None = None,
    ) -> Self:
        """The pipeline of a model spec by name, its weights found under `root` as the engine finds them
        (None: $LANDIFF_HOME, ./ckpts, the user data dir); the tiny model's weights are written on first use.
        Nothing loads until the first job."""
        spec = get_spec(model)
        layout = layout_for(spec.name, root)
        if spec.random_weights:
            ensure_tiny_release(layout, spec)
        return cls(spec, layout, device=device, memory=memory, dit=dit)

    def stage1(self) -> SemanticStage:
        if self._stage1 is None:
            self._stage1 = self._load("stage 1 (flan-T5, language model, semantic decoder)", SemanticStage)
        return self._stage1

    def stage2(self) -> VideoStage:
        if self._stage2 is None:
            self._stage2 = self._load("stage 2 (T5, diffusion transformer, VAE)", VideoStage)
        return self._stage2

    def _load(self, what: str, stage_class):
        started = time.perf_counter()
        stage = stage_class.load(self.spec, self.layout, self.parking, self.dtype)
        self._prepare(stage)
        log.info(
            "%s of %s loaded onto %s in %.1f s: %.1f MiB of weights",
            what,
            self.spec.name,
            self.parking,
            time.perf_counter() - started,
            module_bytes(stage.modules()) / 2**20,
        )
        return stage

    def loaded_models(self) -> list[str]:
        """The stages whose models are loaded ("stage1", "stage2"): what the engine's status lists."""
        stages = (("stage1", self._stage1), ("stage2", self._stage2))
        return [name for name, stage in stages if stage is not None]

    def weight_bytes(self) -> int:
        """Bytes of the loaded stages' parameters and buffers."""
        return sum(
            module_bytes(stage.modules()) for stage in (self._stage1, self._stage2) if stage is not None
        )

    def close(self) -> None:
        """Let go of what the pipeline runs besides its models: nothing here; a parallel group's pipeline
        (engine/generation/parallel) stops its helper ranks. The worker calls it when it lets go."""

    def _prepare(self, stage) -> None:
        """The DiT's speed options, then the memory profile's hold on the stage's models."""
        choice = self.memory_choice
        if isinstance(stage, VideoStage):
            stage.device = self.device
            stage.prepare(self.dit, self.dtype, vae_tiling=choice.vae_tiling)
        elif self.dit.compile:
            enable_compile_cache()
            stage.compile_decoding = True
        if self.residency is None:
            return
        if isinstance(stage, VideoStage):
            stage.adopt(self.residency, stream_blocks=choice.streams_blocks, quantize=choice.weights_8bit)
        else:
            stage.adopt(self.residency)
        stage.device = self.device

    def active(self, stage):
        """The stage, whose models come to the device as its work needs them (see memory.py)."""
        return stage

    def park(self, stage) -> None:
        """After a stage: its transient models leave the device (also when it failed half-way)."""
        if self.residency is not None:
            stage.leave()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def semantic_tokens(
        self,
        job: JobSpec,
        on_progress: Callable[[ProgressReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        clock: JobClock | None = None,
    ) -> SemanticTokens:
        """Stage 1 alone: the prompt's semantic tokens (run's first half; an LLM lane's whole work).
        Raises SamplingCancelled when `should_stop` says so."""
        clock = clock or JobClock(job.plan(self.spec), job.steps, self.learned)
        text_clock = StageClock("text", on_progress, clock)
        token_clock = StageClock("tokens", on_progress, clock)
        timings: dict[str, float] = {}

        def text_done() -> None:
            stage2 = self._stage2
            if self.residency is not None and stage2 is not None and stage2.prompt_encoder is not None:
                self.residency.prefetch(stage2.prompt_encoder.model)  # fetched while the LM runs
            timings["text"] = text_clock.seconds()
            text_clock(1, 2)  # the flan-T5 half of the text stage; stage 2's T5 is the other
            token_clock.started = time.perf_counter()

        stage1 = self.active(self.stage1())
        decoding: list[Decoding] = []
        try:
            codes = stage1.codes(
                job.prompt,
                job.sampling(self.spec),
                on_token=token_clock,
                should_stop=should_stop or (lambda: False),
                on_text=text_done,
                on_decoding=decoding.append,
            )
        finally:
            self.park(stage1)
        timings["tokens"] = token_clock.seconds()
        if decoding and decoding[0].compile_s:
            timings["tokens_compile"] = decoding[0].compile_s  # within "tokens", as "compile" in "denoise"
        clock.learn_tokens(timings["tokens"] - timings.get("tokens_compile", 0.0))
        return SemanticTokens(
            codes, timings, str(self.device), time.time(), decoding[0].how if decoding else None
        )

    def run(
        self,
        job: JobSpec,
        on_progress: Callable[[ProgressReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_chunk: Callable[[ChunkDone], None] | None = None,
        tokens: SemanticTokens | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> JobResult:
        """Run one job: tokens, then chunk after chunk denoised, decoded and appended to the mp4.

        `tokens`: stage 1's result made elsewhere (an LLM lane, engine/daemon/token_lane.py): only stage 2
        runs here. A cancel after some chunks finished raises JobCancelled whose `partial` result points at
        a shorter video of those chunks (renamed into place, with its tokens, thumbnail and record).

        `checkpoints` (an engine job's, engine/generation/resume.py): a resume checkpoint is written into
        its folder after each chunk but the last (before `on_chunk` hears of the chunk), and removed when
        the job ends; with `checkpoints.start` the job continues after that checkpoint's chunks instead of
        from the start (stage 1 does not run again). A stop after a chunk that `checkpoints.suspend` agrees
        to raises JobSuspended and leaves the checkpoint and the partial video to be resumed.
        """
        job.validate(self.spec)
        plan = job.plan(self.spec)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings: dict[str, float] = {}
        clock = JobClock(plan, job.steps, self.learned)
        text_steps = 1 if job.tokens is not None else 2
        text_clock = StageClock("text", on_progress, clock)
        stage1 = {"device": "file" if job.tokens is not None else str(self.device), "ahead": False}
        start = None if checkpoints is None else checkpoints.start

        def stop() -> bool:
            return should_stop is not None and should_stop()

        try:
            if start is not None:  # the tokens the run that wrote the checkpoint used
                codes = start.codes
                timings.update(start.timings)
                stage1 = start.stage1
            elif tokens is not None:
                codes = tokens.codes
                timings.update(tokens.timings)
                stage1 = tokens.record()
            elif job.tokens is not None:
                codes = load_tokens(job.tokens)
            else:
                made = self.semantic_tokens(job, on_progress, stop, clock)
                codes = made.codes
                timings.update(made.timings)
                stage1 = made.record(ahead=False)
        except SamplingCancelled as error:
            raise JobCancelled(str(error)) from error
        stage2 = self.stage2()
        stage2.check_codes(codes, plan.segments)
        stage2 = self.active(stage2)
        try:
            started = time.perf_counter()
            text = stage2.encode_prompt(job.prompt)
            timings["text"] = timings.get("text", 0.0) + time.perf_counter() - started
            if job.tokens is None and start is None:  # both text encoders' time
                clock.learn("text_s", timings["text"])
            text_clock(text_steps, text_steps)
            render = Render(
                job, plan, stage2, text, codes, clock, timings, on_progress, stop, on_chunk, stage1
            )
            if checkpoints is not None and plan.chunks > 1:
                render.checkpoints = checkpoints
                render.saving = CheckpointWriter(
                    checkpoints.folder,
                    fingerprint(job, self.spec.name, self.device.type),
                    self.options(),
                    start,
                )
            return self._render_and_finish(render)
        finally:
            self.park(stage2)

    def options(self) -> dict[str, Any]:
        """What a checkpoint records of how this pipeline runs: a run resumed under other options makes other
        bits than an uninterrupted one would (said in the log, not refused)."""
        options = {
            "dtype": str(self.dtype).removeprefix("torch."),
            "dit": self.dit.record(),
            "vae_spatial_tiling": self.memory_choice.vae_tiling,
            "dit_weights_8bit": self.memory_choice.weights_8bit,
        }
        return json.loads(json.dumps(options))  # as a checkpoint's record holds them

    def _render_and_finish(self, render: Render) -> JobResult:
        start = None if render.checkpoints is None else render.checkpoints.start
        resume = None if start is None else start.writer
        writer = InterpolatingWriter(render.job.out, render.job.fps, self.spec.fps, resume=resume)
        try:
            self._render(render, writer)
        except DiffusionCancelled as error:
            if not render.clock.finished:
                writer.abort()
                raise JobCancelled(str(error)) from error
            saving, checkpoints = render.saving, render.checkpoints
            if (
                saving is not None
                and checkpoints is not None
                and saving.saved == render.clock.finished
                and checkpoints.suspend()
            ):
                writer.close()
                done, chunks = render.clock.finished, render.plan.chunks
                raise JobSuspended(
                    f"{error}; it resumes after chunk {done} of {chunks} when the engine starts again",
                    chunks_done=done,
                    chunks=chunks,
                ) from error
            result = self._finish(render, writer, partial=True)
            raise JobCancelled(
                f"{error}; kept the {render.clock.finished} finished chunk(s)", result
            ) from error
        except BaseException:
            writer.abort()
            raise
        return self._finish(render, writer, partial=False)

    def _render(self, render: Render, writer: InterpolatingWriter) -> None:
        job, plan, stage2, text, codes = render.job, render.plan, render.stage2, render.text, render.codes
        clock, timings, on_progress, stop, on_chunk = (
            render.clock,
            render.timings,
            render.on_progress,
            render.stop,
            render.on_chunk,
        )
        decoder = stage2.video_decoder()
        denoise = StageClock("denoise", on_progress, clock)
        step_started = [time.perf_counter()]
        counts = CacheCounts()
        cursor = RenderCursor()
        start = None if render.checkpoints is None else render.checkpoints.start
        if start is not None:
            cursor = RenderCursor(start.cursor.index, start.cursor.generator, start.cursor.prefix)
            self._resume(render, start, decoder, counts)
            render.frames_sha256 = list(start.frames_sha256[: start.chunks_done])

        preview: list[np.ndarray] = []  # the live preview of the step about to be reported, if it has one

        def on_preview(index: int, step: int, total: int, picture: np.ndarray) -> None:
            preview[:] = [picture]

        def on_step(index: int, step: int, total: int) -> None:
            now = time.perf_counter()
            clock.denoise_s += now - step_started[0]
            clock.denoise_steps += 1
            clock.dit_calls, clock.dit_calls_skipped = counts.calls, counts.skipped
            step_started[0] = now
            denoise(step, total, preview.pop() if preview else None)

        chunks = stage2.render_chunks(
            text,
            codes,
            plan,
            seed=job.seed,
            steps=job.steps,
            on_step=on_step,
            should_stop=stop,
            cache=job.cache,
            counts=counts,
            cursor=cursor,
            on_preview=on_preview if on_progress is not None else None,
        )
        compiled = stage2.compile_seconds()
        for index in range(cursor.index, plan.chunks):
            clock.chunk = index
            denoise.started = step_started[0] = started = time.perf_counter()
            calls_before, skipped_before = counts.calls, counts.skipped
            latents = next(chunks)
            denoised = time.perf_counter()
            if stop():
                raise DiffusionCancelled(f"stopped after denoising chunk {index + 1} of {plan.chunks}")
            decode = StageClock("decode", on_progress, clock)
            new = latents if index == 0 else latents[:, plan.overlap :]
            frames = stage2.frames(decoder, new).numpy()
            render.frames_sha256.append(frames_sha256(frames))
            last = index == plan.chunks - 1
            if render.saving is not None and not last:
                render.saving.chunk(index, new, frames)
            del latents, new
            decode(1, 1)
            decoded = time.perf_counter()
            write = StageClock("write", on_progress, clock)
            first = writer.frames_written
            video = writer.append(frames, last=last)
            if index == 0:
                clock.thumbnail = frames[frames.shape[0] // 2].copy()
            clock.frames_written = writer.frames_written
            write(1, 1)
            written = time.perf_counter()
            clock.finish_s.append(written - denoised)
            timing = ChunkTiming(
                index=index,
                first_frame=first,
                last_frame=writer.frames_written - 1,
                denoise_s=denoised - started,
                decode_s=decoded - denoised,
                write_s=written - decoded,
                dit_calls=counts.calls - calls_before,  # one per CFG branch and step
                dit_calls_skipped=counts.skipped - skipped_before,  # answered by the step cache
            )
            clock.chunk_timings.append(timing)
            for key, seconds in timing.stage_seconds().items():
                stage = key.removesuffix("_s")
                timings[stage] = timings.get(stage, 0.0) + seconds
            self.learned["denoise_step_s"] = clock.step_seconds() or 0.0
            self.learned["chunk_finish_s"] = clock.finish_seconds() or 0.0
            clock.finished = index + 1
            if render.saving is not None and not last:  # after the chunk is in the file, before it is told
                assert clock.thumbnail is not None  # taken from chunk 0
                render.saving.state(
                    clock.finished,
                    plan.chunks,
                    codes,
                    cursor,
                    writer.point(),
                    clock.thumbnail,
                    self._resume_record(render),
                )
            if on_chunk is not None:
                report = ChunkReport(
                    index=index,
                    chunks=plan.chunks,
                    first_frame=first,
                    last_frame=writer.frames_written - 1,
                    frames_written=writer.frames_written,
                    video_seconds=writer.seconds,
                    timings_s=timing.stage_seconds(),
                )
                on_chunk(ChunkDone(report, timing, frames, writer.partial, video_frames=video))
            del frames, video
        chunks.close()
        compiled_now = stage2.compile_seconds()
        if compiled is not None and compiled_now is not None and compiled_now > compiled:
            # the first DiT call of a new shape compiles (cached on disk for later runs); within denoise
            timings["compile"] = compiled_now - compiled

    def _resume(self, render: Render, start: Checkpoint, decoder, counts: CacheCounts) -> None:
        """Continue after the checkpoint's chunks: the clock as it was, and the VAE decoder's causal cache
        made again by decoding their latents as the first run did (their frames checked against the first
        run's). A stop meanwhile raises DiffusionCancelled: the job then holds the checkpoint's chunks."""
        stage2, clock, plan = render.stage2, render.clock, render.plan
        done = start.chunks_done
        clock.chunk = clock.finished = done
        clock.chunk_timings = list(start.chunk_timings)
        clock.frames_written = start.writer.frames_written
        clock.thumbnail = start.thumbnail.copy()
        clock.denoise_s = float(start.clock["denoise_s"])
        clock.denoise_steps = int(start.clock["denoise_steps"])
        clock.finish_s = [float(seconds) for seconds in start.clock["finish_s"]]
        counts.calls = sum(timing.dit_calls or 0 for timing in start.chunk_timings)
        counts.skipped = sum(timing.dit_calls_skipped or 0 for timing in start.chunk_timings)
        clock.dit_calls, clock.dit_calls_skipped = counts.calls, counts.skipped
        options = self.options()
        if start.options != options:
            changed = sorted(key for key in options if start.options.get(key) != options[key])
            log.warning(
                "resumed under other options than the first run (%s): its frames may differ in their last "
                "bits from an uninterrupted run's",
                ", ".join(changed),
            )
        started = time.perf_counter()
        if stage2.vae is not None:
            stage2.ready(stage2.vae)
        differ = []
        for index in range(done):
            if render.stop():
                raise DiffusionCancelled(f"stopped while resuming after chunk {done} of {plan.chunks}")
            frames = stage2.frames(decoder, start.latents(index)).numpy()
            if frames_sha256(frames) != start.frames_sha256[index]:
                differ.append(index + 1)
            del frames
        seconds = time.perf_counter() - started
        render.timings["resume"] = render.timings.get("resume", 0.0) + seconds  # with earlier resumes
        log.info(
            "resuming after chunk %d of %d: its VAE cache made again from %d chunk(s) in %.1f s",
            done,
            plan.chunks,
            done,
            seconds,
        )
        if differ:
            log.warning(
                "the VAE decodes chunk(s) %s to other pixels than the first run did: the resumed chunks may "
                "differ slightly from an uninterrupted run's",
                ", ".join(map(str, differ)),
            )

    @staticmethod
    def _resume_record(render: Render) -> dict[str, Any]:
        """The job's record so far, as a checkpoint keeps it (JSON values)."""
        clock = render.clock
        return {
            "chunk_timings": [timing.model_dump() for timing in clock.chunk_timings],
            "timings": dict(render.timings),
            "stage1": render.stage1,
            "clock": {
                "denoise_s": clock.denoise_s,
                "denoise_steps": clock.denoise_steps,
                "finish_s": clock.finish_s,
            },
        }

    def _finish(self, render: Render, writer: InterpolatingWriter, partial: bool) -> JobResult:
        job, plan, codes, clock, timings = render.job, render.plan, render.codes, render.clock, render.timings
        tokens_path = job.out.with_suffix(".npy")
        thumbnail_path = job.out.with_suffix(".png")
        sidecar = job.out.with_suffix(".json")
        try:
            save_tokens(codes.numpy(), tokens_path)
            thumbnail = clock.thumbnail
            assert thumbnail is not None  # taken from chunk 0, which every finished or partial job has
            write_thumbnail(thumbnail, thumbnail_path)
            writer.finish()
            done = len(clock.chunk_timings)
            hashing = time.perf_counter()
            weights_sha256 = file_checksums(self.layout)  # cached by size and mtime: hashed once per file
            log.debug("weights' SHA-256 in %.2f s", time.perf_counter() - hashing)
            result = JobResult(
                job.out,
                tokens_path,
                sidecar,
                thumbnail_path,
                {stage: round(seconds, 4) for stage, seconds in timings.items()},
                peak_memory(self.device),
                frames=writer.frames_written,
                fps=writer.fps,
                video_frames=writer.video_frames,
                interpolation=writer.record(),
                chunks_done=done,
                chunks=plan.chunks,
                chunk_timings=list(clock.chunk_timings),
                length=plan.record(),
                partial=partial,
                weights_sha256=weights_sha256,
                dit_calls=sum(timing.dit_calls or 0 for timing in clock.chunk_timings),
                dit_calls_skipped=sum(timing.dit_calls_skipped or 0 for timing in clock.chunk_timings),
                resumes=[] if render.saving is None else list(render.saving.resumes),
            )
            height, width = thumbnail.shape[:2]
            write_record(
                result.sidecar,
                self.sidecar_record(
                    job, result, (writer.frames_written, height, width), render.stage1, render.frames_sha256
                ),
            )
            if render.saving is not None:  # the job has ended: nothing of it is resumed any more
                render.saving.discard()
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

    def sidecar_record(
        self,
        job: JobSpec,
        result: JobResult,
        shape: tuple[int, int, int],
        stage1: dict[str, Any],
        frames_sha256: list[str] | None = None,
    ) -> dict[str, Any]:
        """The JSON record beside the video: everything needed to reproduce it, and what it cost.
        `stage1`: where its tokens came from (this device, an LLM lane's, or a file); `frames_sha256`: each
        chunk's frames' hash (`environment` and `hashes`: what `landiff-engine verify` compares,
        engine/generation/verify.py)."""
        return {
            "engine_version": __version__,
            "model": self.spec.name,
            "job": {
                key: str(value) if isinstance(value, Path) else value for key, value in asdict(job).items()
            },
            "status": "cancelled_partial" if result.partial else "finished",
            # frames: the model's, at its fps (as the job's `frames`); video_frames: the file's, at `fps`
            "video": {
                "frames": shape[0],
                "model_fps": self.spec.fps,
                "video_frames": result.video_frames,
                "fps": result.fps,
                "height": shape[1],
                "width": shape[2],
            },
            "interpolation": result.interpolation,
            "length": result.length,
            "chunks": {"done": result.chunks_done, "planned": result.chunks},
            "device": str(self.device),
            "stage1": stage1,
            "dtype": str(self.dtype).removeprefix("torch."),
            "memory": self.memory_choice.record(),
            "dit": self.dit.record(),
            "step_cache": {
                "threshold": job.cache,
                "dit_calls": result.dit_calls,
                "dit_calls_skipped": result.dit_calls_skipped,
            },
            "resumed_after_chunks": result.resumes,
            "environment": environment(self.device, self.layout.root),
            "hashes": record_hashes(result.tokens, (frames_sha256 or [])[: result.chunks_done]),
            **result.outcome().model_dump(mode="json"),  # under the names the job's summary uses
        }


def module_bytes(modules) -> int:
    return sum(
        tensor.numel() * tensor.element_size()
        for module in modules
        for tensor in [*module.parameters(), *module.buffers()]
    )
