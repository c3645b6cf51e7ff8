"""A worker: one thread that owns a device and runs queued jobs through its pipeline, one at a time.

An engine has one per device it was given (engine/daemon/pool.py holds them). Its pipeline is a
PipelineBackend (engine/daemon/backend.py): local, a parallel group's, or a Ray actor's handle. Threads
suffice for local workers: torch releases the GIL inside its kernels.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomic import partial_path
from engine.daemon.backend import PipelineBackend, PipelineFactory
from engine.daemon.devices import AUTO
from engine.daemon.disk import PREVIEW_WIDTH, DiskFull, check_room, disk_full_message, job_output_bound
from engine.daemon.events import Publisher
from engine.daemon.lifecycle import JobLifecycle, mebibytes
from engine.daemon.model_thread import (
    free_device_memory,
    keep_stepping,
    load_torch,
    release_due,
    warm_pipeline,
)
from engine.daemon.store import JOB_ID, JobRow, Store, job_folder
from engine.generation.resume_point import FOLDER, VIDEO, NotResumable, discard, has_checkpoint, resume_point
from engine.protocol import JobParams, ModelsReleasedEvent, ProgressReport

if TYPE_CHECKING:  # torch and the models load in the worker thread, after the socket is up
    from engine.daemon.token_lane import TokenLane
    from engine.generation.job import ChunkDone, JobResult
    from engine.generation.resume import Checkpoint

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.1  # at most ten progress events a second per job, plus each stage's last step
LIVE_PREVIEW = "live.png"  # a running job's live preview while it denoises (overwritten; gone when it ends)


class ProgressThrottle:
    def __init__(self, publish: Callable[[ProgressReport], None]):
        self.publish, self.last = publish, 0.0
        self.stage: str | None = None

    def __call__(self, progress: ProgressReport) -> None:
        now = time.monotonic()
        if (
            progress.stage != self.stage
            or progress.step >= progress.total
            or now - self.last >= PROGRESS_INTERVAL_S
            or progress.preview is not None  # at most one a second (engine.generation.latent_preview)
        ):
            self.stage, self.last = progress.stage, now
            self.publish(progress)


class WorkerLost(Exception):
    """Raised by a pipeline whose worker died under it (a Ray actor gone, a rank process gone): the job is
    not at fault (it goes back to the queue once) and this worker cannot run another (it leaves the pool)."""


class JobWorker(threading.Thread):
    def __init__(
        self,
        store: Store,
        make_pipeline: PipelineFactory,
        publish: Publisher,
        outputs: Path,
        idle_release_s: float,
        label: str = AUTO,
        device: str | None = None,
    ):
        """`label` names the worker in status, events and job rows ("cuda:1", "cpu:0"; AUTO becomes "cpu"
        or "cuda:0" once torch has loaded); `device` is the torch device its pipeline runs on (None: the
        default one), for a remote worker whatever names where it runs."""
        super().__init__(name=f"landiff-worker-{label}", daemon=True)
        self.store, self.make_pipeline, self.publish, self.outputs = store, make_pipeline, publish, outputs
        self.idle_release_s = idle_release_s
        self.label, self.device = label, device
        self.pipeline: PipelineBackend | None = None
        self.torch_ready = False  # set by the worker thread once torch is imported
        self.loading = True  # torch or the pipeline is loading
        self.lost: str | None = None  # why its pipeline was lost: it claims no more jobs
        self.on_lost: Callable[[JobWorker], None] | None = None  # the pool's: the worker leaves it
        self.last_used = time.monotonic()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.cancel_requested = threading.Event()
        self.release_requested = threading.Event()
        self.current: str | None = None
        self.lock = threading.Lock()
        self.lane: TokenLane | None = None  # the LLM lane that makes its jobs' tokens (`serve --llm-device`)
        # its long jobs write resume checkpoints and continue from them (engine/generation/resume.py); not
        # where the pipeline writes elsewhere (a Ray actor's)
        self.checkpoints = True

    # called from the asyncio side

    def notify(self) -> None:
        self.wake.set()

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: "cancelled" when it was still queued (one conditional update, which the claim
        cannot race), "cancelling" when it runs here (it stops at its next step), None when neither.

        Blocks on the store (call it off the event loop). A job whose claim won the race is current by
        the time this takes the lock: `claim` marks it running and current under that same lock.
        (An engine's WorkerPool.cancel does the same over all its workers.)
        """
        if self.store.cancel_queued(job_id):
            return "cancelled"
        return "cancelling" if self.stop_job(job_id) else None

    def stop_job(self, job_id: str) -> bool:
        """Ask the job to stop at its next step when it runs here; whether it does."""
        with self.lock:
            if self.current == job_id:
                self.cancel_requested.set()
                return True
        return False

    def request_release(self) -> None:
        self.release_requested.set()
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def loaded_models(self) -> list[str]:
        pipeline = self.pipeline
        return [] if pipeline is None else pipeline.loaded_models()

    @property
    def state(self) -> str:
        if self.lost is not None:
            return "lost"
        if self.loading:
            return "loading"
        return "idle" if self.current is None else "running"

    def view(self) -> dict[str, Any]:
        """What status shows of this worker (protocol.WorkerState)."""
        used, total = gpu_memory(self.pipeline)
        return {
            "label": self.label,
            "device": self.device,
            "state": self.state,
            "job_id": self.current,
            "models_loaded": self.loaded_models(),
            "memory_used_bytes": used,
            "memory_total_bytes": total,
        }

    # the worker thread

    def run(self) -> None:
        load_torch(self.stopping, "the worker")
        self.torch_ready = True
        if self.label == AUTO:
            self.label = default_label()
        self.loading = False
        keep_stepping(self.step, lambda: not self.stopping.is_set() and self.lost is None, "worker")
        if self.pipeline is not None:  # a parallel group's helper ranks end with their worker
            close_pipeline(self.pipeline)

    def step(self) -> None:
        why = release_due(self.release_requested, self.pipeline, self.last_used, self.idle_release_s)
        if why is not None:
            self.release(why)
        row = self.claim()
        if row is None:
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            return
        assert row.started_at is not None  # claiming a job stamps it
        log.info("job %s started after %.1f s in the queue", row.id, row.started_at - row.created_at)
        try:
            self.run_job(row.id, JobParams(**json.loads(row.params)), row.model)
        finally:
            with self.lock:
                self.current = None
            self.last_used = time.monotonic()

    def claim(self) -> JobRow | None:
        """The next queued job, now running and current here (one step under the lock `cancel` takes)."""
        with self.lock:
            row = self.store.claim_next(worker=self.label)
            if row is not None:
                self.current = row.id
                self.cancel_requested.clear()
            return row

    def release(self, why: str) -> None:
        self.release_requested.clear()
        if self.pipeline is None:
            return
        loaded, weights = self.loaded_models(), self.pipeline.weight_bytes()
        close_pipeline(self.pipeline)
        self.pipeline = None
        free_device_memory()
        self.publish(ModelsReleasedEvent())
        log.info(
            "models released %s: %s (%s of weights)", why, ", ".join(loaded) or "none", mebibytes(weights)
        )

    def run_job(self, job_id: str, params: JobParams, model: str | None = None) -> None:
        """Run a job this worker claimed, to one of its ends (engine/daemon/lifecycle.py says each); a long
        video with a resume checkpoint continues from it."""
        from engine.generation.job import JobCancelled, JobSuspended

        lifecycle = JobLifecycle(self.store, self.publish, job_id, self.label)
        folder = job_folder(self.outputs, job_id)
        start = self.checkpoint(job_id, folder, params, model)
        if start is None:
            lifecycle.started()
        else:
            lifecycle.started(start.chunks_done, start.chunks, start.chunk_timings)
        try:
            try:
                result = self.render(lifecycle, folder, params, model, start)
            finally:  # the live preview is of a step, not of the job's outcome
                (folder / LIVE_PREVIEW).unlink(missing_ok=True)
        except WorkerLost as lost:
            self.lose(lifecycle, folder, lost)
        except JobSuspended as suspended:  # the engine stops: the next one resumes it
            lifecycle.suspended(str(suspended), suspended.chunks_done, suspended.chunks)
        except JobCancelled as cancelled:
            if cancelled.partial is None:
                remove_job_files(folder)
            lifecycle.stopped(self.stopping.is_set(), str(cancelled), cancelled.partial)
        except Exception as error:  # any failure is the job's, never the engine's
            remove_job_files(folder)  # a failed job keeps no file (chunk previews, a partial video)
            full = error.strerror if isinstance(error, DiskFull) else disk_full_message(error, self.outputs)
            described = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            # a refusal or a full disk says it all; anything else keeps its traceback in the log
            lifecycle.failed(full or described, None if full or isinstance(error, ValueError) else error)
        else:
            with self.lock:  # from here a cancel finds the job no longer running here: too late, it is told
                cancel_won = self.cancel_requested.is_set()
                self.current = None
            if cancel_won:  # answered "cancelling" before its last step ended: the cancel wins
                remove_job_files(folder)
                lifecycle.stopped(False, "cancelled as its last step ended", None)
            else:
                lifecycle.finished(result)

    def checkpoint(
        self, job_id: str, folder: Path, params: JobParams, model: str | None
    ) -> Checkpoint | None:
        """The job's resume checkpoint when it has one this worker continues from, checked; else None (the
        job starts from its first chunk; a checkpoint that does not fit is removed, the log says why)."""
        if not has_checkpoint(folder):
            return None
        if not self.checkpoints or model is None:
            log.warning(
                "job %s: not resumed, starting from its first chunk: this worker does not resume", job_id
            )
            discard(folder)
            return None
        from engine.generation.job import JobSpec
        from engine.generation.resume import load_or_none

        try:
            job = JobSpec.from_params(params.model_dump(), out=folder / VIDEO)
        except ValueError:
            return None  # the job fails as it starts, saying why
        return load_or_none(folder, job, model, self.device_type(), f"job {job_id}")

    def device_type(self) -> str:
        """The kind of device its pipeline runs on ("cuda", "cpu"); torch is loaded."""
        import torch

        if self.device is not None:
            return torch.device(self.device).type
        return "cuda" if torch.cuda.is_available() else "cpu"

    def render(
        self,
        lifecycle: JobLifecycle,
        folder: Path,
        params: JobParams,
        model: str | None,
        start: Checkpoint | None = None,
    ) -> JobResult:
        """The job through this worker's pipeline (loaded first if need be), its stage 1 from the LLM lane
        when there is one (none when it resumes from `start`: the checkpoint holds its tokens); its progress
        and chunks go to `lifecycle` as they come."""
        from engine.generation.job import JobSpec
        from engine.generation.resume import Checkpoints
        from engine.generation.video import write_thumbnail

        job = JobSpec.from_params(params.model_dump(), out=folder / VIDEO)

        def chunk_finished(done: ChunkDone) -> None:
            preview = folder / f"chunk-{done.report.index:03d}.png"
            lifecycle.chunk_recorded(done, write_thumbnail(done.preview, preview, width=PREVIEW_WIDTH))

        def progressed(report: ProgressReport) -> None:
            lifecycle.progress(report)
            if report.preview is not None:
                live_preview(lifecycle, report, folder / LIVE_PREVIEW)

        def should_stop() -> bool:
            return self.cancel_requested.is_set() or self.stopping.is_set()

        def suspend() -> bool:  # a stop that is the engine's, not a cancel: the next engine resumes the job
            return self.stopping.is_set() and not self.cancel_requested.is_set()

        if model is not None:  # before any model loads: a job that cannot fit fails now, saying so
            check_room(self.outputs, job_output_bound(model, params.frames, params.overlap, params.fps))
        pipeline = warm_pipeline(self)
        throttle = ProgressThrottle(progressed)
        made = {}  # stage 1 made by the LLM lane: this worker runs stage 2 only
        if self.lane is not None and start is not None:
            self.lane.drop(lifecycle.job_id)  # made ahead, maybe: the checkpoint holds its tokens
        elif self.lane is not None and job.tokens is None:
            self.lane.want(lifecycle.job_id)
            try:  # its models load while the lane makes the tokens (the first job, after a release)
                pipeline.stage2()
            except BaseException:
                self.lane.drop(lifecycle.job_id)
                raise
            made["tokens"] = self.lane.take(lifecycle.job_id, throttle, should_stop)
        checkpoints = Checkpoints(folder, start, suspend) if self.checkpoints else None
        return pipeline.run(
            job,
            on_progress=throttle,
            should_stop=should_stop,
            on_chunk=chunk_finished,
            checkpoints=checkpoints,
            **made,
        )

    def lose(self, lifecycle: JobLifecycle, folder: Path, lost: WorkerLost) -> None:
        """The pipeline died under the job: its files go, the job goes back to the queue once (unless its
        cancel or the engine's stop was asked: then it ends so), and this worker leaves the pool."""
        why = str(lost) or type(lost).__name__
        remove_job_files(folder)
        self.pipeline = None
        with self.lock:  # no claim after this; a cancel that finds the job no longer here retries the queue
            self.lost = why
            self.current = None
            cancelled = self.cancel_requested.is_set()
        log.error(
            "worker %s was lost running job %s: %s; it takes no more jobs", self.label, lifecycle.job_id, why
        )
        ending = "interrupted" if self.stopping.is_set() else "cancelled" if cancelled else None
        lifecycle.lost(why, ending)
        if self.on_lost is not None:
            self.on_lost(self)


def live_preview(lifecycle: JobLifecycle, report: ProgressReport, path: Path) -> None:
    """Write a denoising step's live preview over the job's last one (atomically) and say so; a preview
    that cannot be written is skipped (the log says why), never the job's failure."""
    from engine.generation.video import write_thumbnail

    try:
        write_thumbnail(report.preview, path, width=PREVIEW_WIDTH)
    except OSError as error:
        log.warning("job %s: live preview not written: %s", lifecycle.job_id, error)
        return
    lifecycle.previewed(report, path)


def close_pipeline(pipeline: PipelineBackend) -> None:
    """Its `close`: a parallel group's stops its helper ranks; a Ray actor's handle has nothing to stop
    (the actor outlives it)."""
    pipeline.close()


def gpu_memory(pipeline: Any) -> tuple[int | None, int | None]:
    """Used and total bytes of the GPU a local pipeline runs on ((None, None) for none, a CPU one or a
    remote one, which has no torch `device`). Torch is loaded: the pipeline was made in the worker."""
    device = getattr(pipeline, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None, None
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return total - free, total


def default_label() -> str:
    """The label of a worker on the default device, once torch is loaded: "cuda:0" or "cpu"."""
    import torch

    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def recover_running(store: Store, outputs: Path) -> list[str]:
    """At start, before any worker runs: the jobs a dead engine left running go back to the queue where
    their resume checkpoints let them continue (engine/generation/resume.py), the others are marked
    interrupted. A job resumes after a chunk it has not resumed after before: one that kills its engine
    each time it resumes there ends interrupted. Returns the interrupted ids (their files are the caller's
    to remove)."""
    resume = []
    for row in store.running():
        if not JOB_ID.fullmatch(row.id):
            continue  # marked interrupted: its id names no folder
        try:
            point = resume_point(job_folder(outputs, row.id))
            if point.model != row.model:
                raise NotResumable(f"its resume checkpoint is of model {point.model}, the job of {row.model}")
            if row.resumed_at_chunk is not None and point.chunks_done <= row.resumed_at_chunk:
                raise NotResumable(f"it resumed after chunk {point.chunks_done} before and got no further")
        except Exception as error:  # a checkpoint that cannot be resumed never keeps the engine from starting
            if has_checkpoint(job_folder(outputs, row.id)):
                log.warning("job %s is not resumed: %s", row.id, error)
            continue
        done, chunks = point.chunks_done, point.chunks
        log.info("job %s goes back to the queue: it resumes after chunk %d of %d", row.id, done, chunks)
        resume.append(row.id)
    return store.interrupt_running(resume)


def sweep_leftovers(outputs: Path) -> None:
    """Half-written outputs of an engine that died mid-job (a growing long video, its scratch chunk), but
    not the growing video of a job that resumes from its checkpoint. Called once at start, before any
    worker runs: then every one is a leftover."""
    if not outputs.is_dir():
        return
    for path in [*outputs.glob("*/.*"), *outputs.glob(f"*/{FOLDER}/.*")]:
        if ".partial" in path.name or path.name.endswith(".chunk.mp4"):
            if path.name == partial_path(path.parent / VIDEO).name and has_checkpoint(path.parent):
                continue  # cut back to its checkpoint when the job resumes
            log.info("removing %s, left by an engine that stopped mid-job", path)
            path.unlink(missing_ok=True)


def remove_job_files(folder: Path) -> None:
    """Every file of a job that keeps none (failed, cancelled or interrupted before a chunk was kept)."""
    if folder.is_dir():
        log.info("removing %s and its files", folder)
        shutil.rmtree(folder, ignore_errors=True)
