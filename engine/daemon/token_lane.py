"""The LLM lane (`serve --llm-device`): stage 1 on a device of its own, ahead of the workers.

Without a lane, a worker runs a job's two stages back to back on its device. With one, stage 1 (flan-T5,
the language model, the semantic decoder's tokens) runs on the lane's device: while the workers render
videos, the lane makes the tokens of the jobs next in the queue, and a worker that claims a job takes its
tokens from here, waiting only when they are not made yet. The workers never load stage 1.

A job stays queued while its tokens are made ahead; a cancel or a delete drops them. The tokens live in
memory only (a few thousand integers a job): an engine that restarts makes them again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.daemon.model_thread import (
    free_device_memory,
    keep_stepping,
    load_torch,
    release_due,
    warm_pipeline,
)
from engine.daemon.store import JobRow, Store, job_folder

if TYPE_CHECKING:  # torch loads in the lane's thread, after the socket is up
    from engine.generation.pipeline import Pipeline, SemanticTokens
    from engine.protocol import ProgressReport

log = logging.getLogger(__name__)
WAIT_S = 0.1  # how often a worker waiting for its tokens looks at its cancel


class LaneFailed(ValueError):
    """Stage 1 failed on the lane for this job; its message is the job's error."""


class TokenLane(threading.Thread):
    def __init__(
        self,
        store: Store,
        make_pipeline: Callable[[], Pipeline],
        label: str,
        outputs: Path,
        idle_release_s: float,
        ahead: int,
    ):
        """`label`: the lane's device ("cuda:2", "cpu"); `ahead`: how many of the oldest queued jobs get
        their tokens made before a worker claims them."""
        super().__init__(name=f"landiff-llm-lane-{label}", daemon=True)
        self.store, self.make_pipeline, self.label, self.outputs = store, make_pipeline, label, outputs
        self.idle_release_s, self.ahead = idle_release_s, ahead
        self.pipeline: Pipeline | None = None
        self.torch_ready = False
        self.loading = True
        self.last_used = time.monotonic()
        self.stopping = threading.Event()
        self.release_requested = threading.Event()
        # all below under `changed`
        self.changed = threading.Condition()
        self.made: dict[str, SemanticTokens | str] = {}  # a job's tokens, or why they could not be made
        # a made job's last progress report of each stage
        self.last_progress: dict[str, dict[str, ProgressReport]] = {}
        self.making: str | None = None
        self.wanted: list[str] = []  # jobs claimed by a worker that waits for their tokens, first first
        self.watchers: dict[str, Callable[[ProgressReport], None]] = {}  # a waiting worker's progress sink
        self.dropped: set[str] = set()  # jobs whose tokens are no longer wanted (cancelled, deleted)

    # called from the workers' threads

    def want(self, job_id: str) -> None:
        """A worker claimed the job: its tokens go first, made while the worker loads its own models."""
        with self.changed:
            if job_id not in self.made and job_id not in self.wanted:
                self.wanted.append(job_id)
                self.changed.notify_all()

    def take(
        self, job_id: str, on_progress: Callable[[ProgressReport], None], should_stop: Callable[[], bool]
    ) -> SemanticTokens:
        """The job's tokens, made ahead or now (it goes first); its stage-1 progress reaches `on_progress`
        (the last event of each stage when they were made ahead). Raises JobCancelled when `should_stop`
        says so meanwhile, LaneFailed when stage 1 failed for this job."""
        from engine.generation.job import JobCancelled

        with self.changed:
            try:
                if job_id not in self.made:
                    if job_id not in self.wanted:
                        self.wanted.append(job_id)
                    self.watchers[job_id] = on_progress
                    self.changed.notify_all()
                while job_id not in self.made:
                    if should_stop():
                        self.drop_locked(job_id)
                        raise JobCancelled("stopped while its tokens were being made")
                    if not self.is_alive() and not self.stopping.is_set():
                        raise LaneFailed(f"the LLM lane on {self.label} stopped; see the engine's log")
                    self.changed.wait(WAIT_S)
                result = self.made.pop(job_id)
                last = self.last_progress.pop(job_id, {})
            finally:
                if job_id in self.wanted:
                    self.wanted.remove(job_id)
                self.watchers.pop(job_id, None)
        for event in last.values():  # the stages' ends, for a view that follows the job
            on_progress(event)
        if isinstance(result, str):
            raise LaneFailed(result)
        return result

    # called from the asyncio side (or any thread)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def drop(self, job_id: str) -> None:
        """The job's tokens are no longer wanted: forgotten, or their making stops at its next token."""
        with self.changed:
            self.drop_locked(job_id)

    def drop_locked(self, job_id: str) -> None:
        self.made.pop(job_id, None)
        if job_id in self.wanted:
            self.wanted.remove(job_id)
        self.last_progress.pop(job_id, None)
        if self.making == job_id:
            self.dropped.add(job_id)
        self.changed.notify_all()

    def request_release(self) -> None:
        self.release_requested.set()
        self.notify()

    def stop(self) -> None:
        self.stopping.set()
        self.notify()

    def loaded_models(self) -> list[str]:
        pipeline = self.pipeline
        return [] if pipeline is None else pipeline.loaded_models()

    def view(self) -> dict[str, Any]:
        """What status shows of the lane (protocol.LaneState)."""
        with self.changed:
            ready = [job_id for job_id, made in self.made.items() if not isinstance(made, str)]
            making = self.making
        state = "lost" if not self.is_alive() and self.ident is not None else None
        state = state or ("loading" if self.loading else "making" if making else "idle")
        return {
            "label": self.label,
            "state": state,
            "job_id": making,
            "ready": ready,
            "models_loaded": self.loaded_models(),
        }

    # the lane's thread

    def run(self) -> None:
        load_torch(self.stopping, "the LLM lane")
        self.torch_ready = True
        self.loading = False
        keep_stepping(self.step, lambda: not self.stopping.is_set(), "LLM lane")
        self.release("as the engine stops")

    def step(self) -> None:
        why = release_due(self.release_requested, self.pipeline, self.last_used, self.idle_release_s)
        if why is not None:
            self.release(why)
        row = self.next_job()
        if row is None:
            with self.changed:
                self.changed.wait(1.0)
            return
        self.make(row)
        self.last_used = time.monotonic()

    def next_job(self) -> JobRow | None:
        """A job waited for by a worker first; else the next queued one within `ahead` not made yet (none
        while the queue is paused)."""
        with self.changed:
            wanted = [job_id for job_id in self.wanted if job_id not in self.made]
        if wanted:
            row = self.store.get(wanted[0])
            if row is not None:
                return row
        queued, _ = self.store.list_jobs(status="queued", sort="queue", limit=self.ahead)
        self.forget_gone({row.id for row in queued})
        if self.store.queue_paused():
            return None
        with self.changed:
            return next((row for row in queued if row.id not in self.made), None)

    def forget_gone(self, queued: set[str]) -> None:
        """Tokens of jobs neither queued nor waited for any more (cancelled before a worker took them,
        deleted, re-queued elsewhere): dropped, so the lane holds only what will be taken."""
        with self.changed:
            gone = [job_id for job_id in self.made if job_id not in queued and job_id not in self.wanted]
        for job_id in gone:
            row = self.store.get(job_id)
            if row is None or row.status not in ("queued", "running"):
                self.drop(job_id)

    def make(self, row: JobRow) -> None:
        from engine.generation.job import JobSpec
        from engine.models.llm_sampler import SamplingCancelled

        job_id = row.id
        with self.changed:
            self.making = job_id
            self.dropped.discard(job_id)
        last: dict[str, ProgressReport] = {}

        def progress(event: ProgressReport) -> None:
            last[event.stage] = event
            with self.changed:
                watcher = self.watchers.get(job_id)
            if watcher is not None:  # a worker waits for this job: it is running, its view follows it
                watcher(event)

        def should_stop() -> bool:
            return self.stopping.is_set() or job_id in self.dropped

        started = time.monotonic()
        result: SemanticTokens | str | None
        try:
            pipeline = warm_pipeline(self)
            job = JobSpec.from_params(
                json.loads(row.params), out=job_folder(self.outputs, job_id) / "video.mp4"
            )
            job.validate(pipeline.spec)
            result = pipeline.semantic_tokens(job, progress, should_stop)
            log.info(
                "LLM lane %s: tokens of job %s made in %.1f s", self.label, job_id, time.monotonic() - started
            )
        except SamplingCancelled:
            result = None
        except Exception as error:  # the job's failure, told to the worker that takes it
            result = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            log.error(
                "LLM lane %s: tokens of job %s failed: %s",
                self.label,
                job_id,
                result,
                exc_info=not isinstance(error, ValueError),
            )
        with self.changed:
            self.making = None
            if result is not None and job_id not in self.dropped:
                self.made[job_id] = result
                self.last_progress[job_id] = last
            self.dropped.discard(job_id)
            self.changed.notify_all()

    def release(self, why: str) -> None:
        self.release_requested.clear()
        if self.pipeline is None:
            return
        self.pipeline = None
        free_device_memory()
        log.info("LLM lane %s: models released %s", self.label, why)
