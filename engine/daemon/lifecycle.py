"""A claimed job's life in the store and on the wire, as named transitions.

The claim (Store.claim_next: queued -> running on a worker) begins it. Each transition after it is one
conditional update of the job's row, which changes it only while the job runs on this worker, then the
event that says so (published after the write it describes, and only when the write was made). The
worker (engine/daemon/worker.py) decides which transition a job takes and handles its files; this module
knows no pipeline, so each transition can be driven alone with a store and a list of events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.daemon.events import Publisher
from engine.daemon.store import Store, result_columns
from engine.protocol import (
    ChunkTiming,
    JobCancelledEvent,
    JobFailedEvent,
    JobFinishedEvent,
    JobInterruptedEvent,
    JobPreviewEvent,
    JobRequeuedEvent,
    JobStartedEvent,
    JobStoppedEvent,
    ProgressReport,
)

if TYPE_CHECKING:
    from engine.generation.job import ChunkDone, JobResult

log = logging.getLogger(__name__)


def stopped(how: str, **fields: Any) -> JobStoppedEvent:
    """The event of a job that stopped as `how` says: "interrupted" (the engine stopping, its worker lost),
    else cancelled ("cancelled", "cancelled_partial")."""
    if how == "interrupted":
        return JobInterruptedEvent(**fields)
    return JobCancelledEvent(**fields)


class JobLifecycle:
    """The transitions of one job that `worker` claimed: started, progress (and its live previews,
    previewed), chunk_recorded, then one end: finished, stopped (cancelled or interrupted, with or without the
    kept chunks), suspended (back in the queue to resume), failed or lost."""

    def __init__(self, store: Store, publish: Publisher, job_id: str, worker: str):
        self.store, self.publish, self.job_id, self.worker = store, publish, job_id, worker
        self.began = time.monotonic()
        self.chunk_timings: list[ChunkTiming] = []  # the chunks finished so far, as its row holds them

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def write(self, transition: str, **fields: Any) -> bool:
        """The conditional update of a transition; False (and a warning) when the job no longer runs here."""
        if self.store.update_running(self.job_id, self.worker, **fields):
            return True
        log.warning(
            "job %s no longer runs on worker %s: its %s is not recorded", self.job_id, self.worker, transition
        )
        return False

    def end(self, status: str, **fields: Any) -> bool:
        """The job leaves `running` as `status`, stamped now."""
        return self.write(f"end as {status}", status=status, finished_at=time.time(), **fields)

    def started(
        self,
        resumed_at_chunk: int | None = None,
        chunks: int | None = None,
        chunk_timings: Sequence[ChunkTiming] = (),
    ) -> None:
        """The claim made the row running; this says so. A long video resumed from its checkpoint after
        `resumed_at_chunk` of its `chunks` chunks: its row says so and keeps those chunks' `chunk_timings`
        (the chunks it makes now join them)."""
        if resumed_at_chunk is not None:
            self.chunk_timings = list(chunk_timings)
            self.write("resume", resumed_at_chunk=resumed_at_chunk, chunk_timings=self.chunk_timings)
            log.info("job %s resumes after chunk %d of %s", self.job_id, resumed_at_chunk, chunks)
        self.publish(
            JobStartedEvent(
                job_id=self.job_id, worker=self.worker, resumed_at_chunk=resumed_at_chunk, chunks=chunks
            )
        )

    def progress(self, report: ProgressReport) -> None:
        """Not stored: the events say where a running job stands (status shows the latest)."""
        self.publish(report.for_job(self.job_id))

    def previewed(self, report: ProgressReport, preview: Path) -> None:
        """Not stored: a denoising step's live preview is in `preview` (the worker wrote it)."""
        self.publish(
            JobPreviewEvent(
                job_id=self.job_id,
                preview=str(preview),
                chunk=report.chunk,
                chunks=report.chunks,
                step=report.step,
                total=report.total,
            )
        )

    def chunk_recorded(self, done: ChunkDone, preview: Path) -> None:
        """A chunk of the video is on disk: its timing joins the row's, its event names its preview PNG."""
        self.chunk_timings.append(done.timing)
        if not self.write(f"chunk {done.report.index}", chunk_timings=self.chunk_timings):
            return
        report = done.report
        log.info(
            "job %s chunk %d/%d written: frames %d-%d (%s)",
            self.job_id,
            report.index + 1,
            report.chunks,
            report.first_frame,
            report.last_frame,
            seconds_text(report.timings_s),
        )
        self.publish(report.for_job(self.job_id, preview=str(preview), video_partial=str(done.partial_video)))

    def finished(self, result: JobResult) -> None:
        if not self.end("finished", **result_columns(result)):
            return
        video = str(result.video)
        self.publish(
            JobFinishedEvent(
                job_id=self.job_id,
                video=video,
                frames=result.frames,
                fps=result.fps,
                video_frames=result.video_frames,
            )
        )
        log.info(
            "job %s finished in %.1f s: %d frames in %d chunk(s), %s; peak memory %s; %s",
            self.job_id,
            self.elapsed(),
            result.frames,
            result.chunks_done,
            seconds_text(result.timings_s),
            mebibytes(result.peak_memory_bytes),
            video,
        )

    def stopped(self, interrupted: bool, why: str, partial: JobResult | None = None) -> None:
        """Cancelled, or `interrupted` by the engine stopping. With `partial`, the chunks finished before
        are kept as a shorter, playable video, and the job says so (cancelled_partial)."""
        if partial is None:
            status = "interrupted" if interrupted else "cancelled"
            if self.end(status):
                self.publish(stopped(status, job_id=self.job_id))
                log.info("job %s %s after %.1f s: %s", self.job_id, status, self.elapsed(), why)
            return
        status = "interrupted" if interrupted else "cancelled_partial"
        if not self.end(status, **result_columns(partial)):
            return
        video = str(partial.video)
        log.info(
            "job %s %s after %.1f s: kept %d of %d chunk(s), %d frames in %s",
            self.job_id,
            status,
            self.elapsed(),
            partial.chunks_done,
            partial.chunks,
            partial.frames,
            video,
        )
        self.publish(
            stopped(
                status,
                job_id=self.job_id,
                status=status,
                partial=True,
                video=video,
                frames=partial.frames,
                chunks_done=partial.chunks_done,
                chunks=partial.chunks,
            )
        )

    def suspended(self, why: str, chunks_done: int, chunks: int) -> None:
        """The engine stopped after `chunks_done` of the job's `chunks` chunks, whose resume checkpoint and
        partial video stay in its folder: it waits in the queue again, at its old place, and the next engine
        continues it after those chunks."""
        if not self.write("suspend", status="queued", started_at=None):
            return
        log.info("job %s back in the queue after %.1f s: %s", self.job_id, self.elapsed(), why)
        self.publish(
            JobInterruptedEvent(job_id=self.job_id, status="queued", chunks_done=chunks_done, chunks=chunks)
        )

    def failed(self, message: str, error: BaseException | None = None) -> None:
        """`error`: an unexpected exception, whose traceback the log keeps (None for a refusal, a full
        disk: the message says it all)."""
        log.error("job %s failed after %.1f s: %s", self.job_id, self.elapsed(), message, exc_info=error)
        if self.end("failed", error=message):
            self.publish(JobFailedEvent(job_id=self.job_id, error=message))

    def lost(self, why: str, ending: str | None = None) -> None:
        """The worker died under the job. `ending` ("cancelled", "interrupted"): its cancel or the engine's
        stop was asked, so it ends so. Else it goes back to the queue once; lost again, it is interrupted."""
        if ending is not None:
            if self.end(ending, error=f"worker {self.worker} was lost ({why})"):
                self.publish(stopped(ending, job_id=self.job_id))
        elif self.store.requeue(self.job_id):
            log.warning("job %s is queued again after losing worker %s", self.job_id, self.worker)
            self.publish(JobRequeuedEvent(job_id=self.job_id, worker=self.worker, error=why))
        else:
            error = (
                f"worker {self.worker} was lost while running it ({why}), after it had been re-queued once"
            )
            if self.end("interrupted", error=error):
                self.publish(JobInterruptedEvent(job_id=self.job_id, status="interrupted", error=error))
                log.error("job %s interrupted: %s", self.job_id, error)


def seconds_text(timings_s: dict[str, float]) -> str:
    """{"denoise_s": 1.234, "decode": 0.5} -> "denoise 1.23 s, decode 0.50 s"."""
    return ", ".join(f"{stage.removesuffix('_s')} {seconds:.2f} s" for stage, seconds in timings_s.items())


def mebibytes(count: int | None) -> str:
    return "unknown" if count is None else f"{count / 2**20:,.1f} MiB"
