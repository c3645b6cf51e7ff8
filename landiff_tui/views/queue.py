"""Queue: queued and running jobs, each running one with its worker; one of them live (the one under the
cursor, else the first), stage by stage and chunk by chunk; the engine's workers and what each runs."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, ProgressBar

from engine.job_words import CHUNKED_STAGES, PROGRESS_STAGES, progress_words, resumed_words
from engine.wire import RemoteError

from ..keymap import bindings
from ..messages import (
    ChunkFinished,
    EngineConnected,
    EngineLost,
    JobDeleted,
    JobEnded,
    JobPreviewed,
    JobProgressed,
    JobQueued,
    JobRequeued,
    JobStarted,
    QueueChanged,
)
from ..screens.confirm import Confirm
from ..widgets.lists import ListTable
from ..widgets.preview import FramePreview
from .base import View, lane_summary

if TYPE_CHECKING:
    from engine.protocol import (
        ChunkFinishedEvent,
        JobPreviewEvent,
        JobProgressEvent,
        JobSummary,
        StatusReply,
        WorkerState,
    )

STAGES = [(stage, title) for stage, (title, _) in PROGRESS_STAGES.items()]  # in the protocol's order


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def size(count: int | None) -> str:
    return "-" if not count else f"{count / 2**30:.1f} GiB"


class StageBar(Horizontal):
    def __init__(self, stage: str, title: str):
        super().__init__(classes="stage", id=f"stage-{stage}")
        self.stage, self.title = stage, title

    def compose(self) -> ComposeResult:
        yield Label(self.title, classes="stage-name")
        yield ProgressBar(total=1, show_eta=False, show_percentage=False)
        yield Label("", classes="stage-detail")

    def show(self, event: JobProgressEvent) -> None:
        self.query_one(ProgressBar).update(total=max(event.total, 1), progress=event.step)
        self.query_one(".stage-detail", Label).update(progress_words(event).detail)

    def show_done(self) -> None:
        """A stage already passed, its numbers unknown (this view joined later): a full bar."""
        bar = self.query_one(ProgressBar)
        if bar.total is None or bar.progress < bar.total or bar.progress == 0:
            bar.update(total=1, progress=1)
            self.query_one(".stage-detail", Label).update("done")

    def show_count(self, done: int, total: int, detail: str) -> None:
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one(".stage-detail", Label).update(detail)

    def reset(self) -> None:
        self.query_one(ProgressBar).update(total=1, progress=0)
        self.query_one(".stage-detail", Label).update("")


@dataclass
class QueueEntry:
    id: str
    prompt: str
    status: str  # queued or running
    place: int  # its place in the queue: the order queued jobs run in
    started_at: float | None = None
    worker: str | None = None  # the worker running it

    @classmethod
    def of(cls, job: JobSummary, place: int) -> QueueEntry:
        worker = job.worker if job.status == "running" else None  # a re-queued job's is its lost one's
        return cls(job.id, job.prompt, job.status, place, job.started_at, worker)


class QueueView(View):
    FOCUS = "#queue-table"
    BINDINGS = bindings("queue")

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, QueueEntry] = {}
        self.last: JobProgressEvent | None = None  # the followed job's latest progress
        self.chunks_done = 0  # of the followed job
        self.reached = 0  # the furthest of its stages (in STAGES' order) that has reported
        self.following: str | None = None  # the running job drawn live
        self.latest: dict[str, JobProgressEvent] = {}  # each running job's latest progress...
        self.latest_chunk: dict[str, ChunkFinishedEvent] = {}  # ...and latest finished chunk
        self.latest_preview: dict[str, JobPreviewEvent] = {}  # ...and latest live preview while denoising
        self.memory: StatusReply | None = None
        self.paused = False  # the engine's queue starts no job until resumed

    def compose(self) -> ComposeResult:
        table = ListTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("status", "worker", "job", "prompt")
        yield table
        with Vertical(id="live"):
            yield Label("", id="workers-line")
            yield Label("nothing is running", id="live-title")
            yield StageBar("chunk", "chunk")
            for stage, title in STAGES:
                yield StageBar(stage, title)
            yield Label("", id="live-info")
            yield Label("", id="preview-caption")
            yield FramePreview(id="chunk-preview", cells=(36, 6))

    def on_mount(self) -> None:
        self.query_one("#stage-chunk").display = False
        self.query_one("#chunk-preview").display = False
        self.query_one("#preview-caption").display = False
        self.set_interval(1.0, self.tick)

    @property
    def running_jobs(self) -> list[QueueEntry]:
        jobs = [job for job in self.jobs.values() if job.status == "running"]
        return sorted(jobs, key=lambda job: job.started_at or 0.0)

    @property
    def running(self) -> QueueEntry | None:
        """The running job drawn live: the one under the cursor, else the first that started."""
        jobs = self.running_jobs
        selected = self.selected_id()
        return next((job for job in jobs if job.id == selected), jobs[0] if jobs else None)

    def selected_id(self) -> str | None:
        try:
            table = self.query_one("#queue-table", DataTable)
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # no table yet, or no row under the cursor
            return None

    # engine

    def on_engine_connected(self, message: EngineConnected) -> None:
        # running, then queued in the order they run
        self.jobs = {job.id: QueueEntry.of(job, place) for place, job in enumerate(message.active)}
        running = {job.id for job in self.running_jobs}
        self.latest = {job_id: event for job_id, event in self.latest.items() if job_id in running}
        self.latest_chunk = {
            job_id: event for job_id, event in self.latest_chunk.items() if job_id in running
        }
        self.latest_preview = {
            job_id: event for job_id, event in self.latest_preview.items() if job_id in running
        }
        self.redraw()
        # where they are now: the engine's status carries each one's last progress, and the queue's pause
        self.run_worker(self.catch_up(), exclusive=True, group="queue-catch-up")

    async def catch_up(self) -> None:
        from engine.protocol import Status

        try:
            status = await self.engine_app.link.call(Status())
        except RemoteError:
            return
        self.memory = status
        self.order(status.queue, status.queue_paused)
        reports = [(worker.progress, worker.last_chunk) for worker in status.workers]
        for progress, chunk in reports or [(status.progress, status.last_chunk)]:  # [...]: an older engine
            if chunk is not None and chunk.job_id in self.jobs:
                self.latest_chunk[chunk.job_id] = chunk
            known = self.latest.get(progress.job_id) if progress is not None else None
            if (
                progress is not None
                and progress.job_id in self.jobs
                and (known is None or progress.seq > known.seq)
            ):
                self.latest[progress.job_id] = progress
        self.follow(force=True)
        self.draw_workers()

    def on_engine_lost(self, message: EngineLost) -> None:
        self.query_one("#live-info", Label).update("engine not connected")

    def on_job_queued(self, message: JobQueued) -> None:
        event = message.event
        last = max((job.place for job in self.jobs.values()), default=-1)
        self.jobs[event.job_id] = QueueEntry(event.job_id, event.prompt, "queued", last + 1)
        self.redraw()

    def on_queue_changed(self, message: QueueChanged) -> None:
        self.order(message.event.queue, message.event.paused)
        self.redraw()

    def order(self, queue: list[str], paused: bool) -> None:
        """The queued jobs' places as the engine's queue has them, and whether it is paused."""
        self.paused = paused
        for place, job_id in enumerate(queue):
            if job_id in self.jobs:
                self.jobs[job_id].place = place

    def on_job_started(self, message: JobStarted) -> None:
        job = self.jobs.get(message.event.job_id)
        if job is None:
            return
        job.status, job.started_at, job.worker = "running", time.time(), message.event.worker
        if resumed := resumed_words(message.event):
            self.app.notify(f"{job.id[:8]}: {resumed}", title="resumed")
        self.redraw()

    def on_job_requeued(self, message: JobRequeued) -> None:
        event = message.event
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        job.status, job.started_at, job.worker = "queued", None, None
        self.latest.pop(job.id, None)
        self.latest_chunk.pop(job.id, None)
        self.latest_preview.pop(job.id, None)
        self.notify(
            f"job {job.id[:8]} is queued again: its worker {event.worker} was lost", severity="warning"
        )
        self.redraw()

    def on_job_progressed(self, message: JobProgressed) -> None:
        self.latest[message.event.job_id] = message.event
        if message.event.job_id == self.following:
            self.last = message.event
            self.show_progress(message.event)

    def on_chunk_finished(self, message: ChunkFinished) -> None:
        self.latest_chunk[message.event.job_id] = message.event
        if message.event.job_id == self.following:
            self.show_chunk(message.event)

    def on_job_previewed(self, message: JobPreviewed) -> None:
        self.latest_preview[message.event.job_id] = message.event
        if message.event.job_id == self.following:
            self.show_live_preview(message.event)

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        self.follow()

    def follow(self, force: bool = False) -> None:
        """Draw the running job to follow (`running`) live, from what is known of it, if it changed."""
        job = self.running
        job_id = job.id if job is not None else None
        if job_id == self.following and not force:
            return
        self.following = job_id
        self.clear_live()
        if job is None:
            return
        chunk, live = self.latest_chunk.get(job.id), self.latest_preview.get(job.id)
        if chunk is not None:
            self.show_chunk(chunk)
        if live is not None and (chunk is None or live.chunk > chunk.index + 1):  # of a later chunk: newer
            self.show_live_preview(live)
        if job.id in self.latest:
            self.last = self.latest[job.id]
            self.show_progress(self.last)
        self.draw_title(job)

    def show_chunk(self, event: ChunkFinishedEvent) -> None:
        """The finished chunk's last frame, and the chunk bar counting it."""
        self.chunks_done = max(self.chunks_done, event.index + 1)
        self.show_picture(event.preview, f"chunk {event.index + 1} of {event.chunks} done: its last frame")
        self.draw_chunks(event.chunks, None)

    def show_live_preview(self, event: JobPreviewEvent) -> None:
        """The sampler's current estimate of the chunk being denoised, roughly (latent resolution, a linear
        map of its channels to RGB): the finished chunk's real frame replaces it when the chunk is done."""
        of = f" of chunk {event.chunk}/{event.chunks}" if event.chunks > 1 else ""
        self.show_picture(event.preview, f"denoising step {event.step}/{event.total}{of} (rough preview)")

    def show_picture(self, path: str, caption: str) -> None:
        preview = self.query_one("#chunk-preview", FramePreview)
        preview.display = True
        preview.show_image(path)
        label = self.query_one("#preview-caption", Label)
        label.display = True
        label.update(caption)

    def on_job_ended(self, message: JobEnded) -> None:
        self.forget(message.event.job_id)

    def on_job_deleted(self, message: JobDeleted) -> None:
        self.forget(message.event.job_id)

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.latest.pop(job_id, None)
        self.latest_chunk.pop(job_id, None)
        self.latest_preview.pop(job_id, None)
        self.redraw()  # the live pane follows another running job, or none

    def clear_live(self) -> None:
        self.last, self.chunks_done, self.reached = None, 0, 0
        for bar in self.query(StageBar):
            bar.reset()
        self.query_one("#stage-chunk").display = False
        self.query_one("#chunk-preview", FramePreview).display = False
        self.query_one("#preview-caption").display = False

    async def tick(self) -> None:
        job = self.running
        if job is None or not self.engine_app.link.connected:
            return
        self.update_info(job)
        if int(time.time()) % 3 == 0:  # memory changes slowly; asking costs the engine a call
            from engine.protocol import Status

            with contextlib.suppress(RemoteError):  # the engine went away meanwhile: the link says so
                self.memory = await self.engine_app.link.call(Status())
                self.draw_workers()

    # drawing

    def redraw(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        selected = self.selected_id()
        table.clear()
        ordered = sorted(self.jobs.values(), key=lambda job: (job.status != "running", job.place))
        for entry in ordered:
            table.add_row(entry.status, entry.worker or "", entry.id[:8], entry.prompt[:120], key=entry.id)
        if selected in self.jobs:  # the cursor stays on its job (the one followed live, when running)
            table.move_cursor(row=table.get_row_index(selected))
        self.follow()
        self.draw_workers()
        job = self.running
        if job is None:
            title = self.query_one("#live-title", Label)
            waiting = "nothing is running" if not self.jobs else f"{len(self.jobs)} job(s) waiting"
            title.update(f"queue paused (p resumes): {waiting}" if self.paused else waiting)
            self.query_one("#live-info", Label).update("")
        else:
            self.draw_title(job)
            self.update_info(job)

    def draw_title(self, job: QueueEntry) -> None:
        where = f" on {job.worker}" if job.worker else ""
        others = len(self.running_jobs) - 1
        more = f"   (+{others} running: the cursor picks the one shown)" if others else ""
        self.query_one("#live-title", Label).update(f"running {job.id[:8]}{where}: {job.prompt[:60]}{more}")

    def draw_workers(self) -> None:
        """The engine's workers and what each runs (as its last status said; the jobs' events since)."""
        workers = self.memory.workers if self.memory is not None else []
        lane = self.memory.llm_lane if self.memory is not None else None
        line = self.query_one("#workers-line", Label)
        line.display = bool(workers) or lane is not None
        parts = [self.worker_text(worker) for worker in workers]
        line.update("workers: " + "  ·  ".join(parts + ([lane_summary(lane)] if lane is not None else [])))

    def worker_text(self, worker: WorkerState) -> str:
        job = next((job for job in self.running_jobs if job.worker == worker.label), None)
        if job is not None:
            return f"{worker.label} running {job.id[:8]}"
        return f"{worker.label} {'idle' if worker.state == 'running' else worker.state}"

    def show_progress(self, event: JobProgressEvent) -> None:
        """The stage at work, the stages before it done, those after it empty (a long video runs
        denoise, decode and write again for each chunk), and the chunks done. A stage once reached stays
        done when an earlier one reports again: stage 2's text encoder runs after the tokens, and its report
        ends the text stage without emptying the tokens bar."""
        order = [stage for stage, _ in STAGES]
        at = order.index(event.stage)
        self.reached = max(self.reached, at)
        for bar in self.query(StageBar):
            if bar.stage not in order:
                continue
            where = order.index(bar.stage)
            if where == at:
                bar.show(event)
            elif where < at or (where <= self.reached and bar.stage not in CHUNKED_STAGES):
                bar.show_done()
            else:
                bar.reset()
        self.draw_chunks(event.chunks, event.chunk)
        job = self.running
        if job is not None:
            self.update_info(job)

    def draw_chunks(self, chunks: int, at: int | None) -> None:
        """Chunks finished of all (the bar is full when the last one is written, not when it starts)."""
        chunk_bar = self.query_one("#stage-chunk", StageBar)
        chunk_bar.display = chunks > 1
        if chunks <= 1:
            return
        if at is not None:
            self.chunks_done = max(self.chunks_done, at - 1)
        working = f"chunk {at} of {chunks}, " if at is not None and at > self.chunks_done else ""
        chunk_bar.show_count(self.chunks_done, chunks, f"{working}{self.chunks_done}/{chunks} done")

    def update_info(self, job: QueueEntry) -> None:
        last = self.last if self.last is not None and self.last.job_id == job.id else None
        elapsed = time.time() - job.started_at if job.started_at else None
        words = None if last is None else progress_words(last)
        # the stage's own ETA is named so while the job's is unknown (before a first job's first timed step)
        eta = (
            "ETA -"
            if words is None
            else f"{'' if words.job_eta else words.title + ' '}ETA {duration(words.eta_s)}"
        )
        parts = [f"elapsed {duration(elapsed)}", eta]
        if last is not None:
            parts.append(f"video so far {last.video_seconds:.1f} s")
            if last.cache_skips:
                parts.append(f"step cache skipped {last.cache_skips} of {last.dit_calls} DiT calls")
        if self.memory is not None:
            used, total = self.memory.memory_used_bytes, self.memory.memory_total_bytes
            where = self.memory.device
            mine = next(
                (w for w in self.memory.workers if w.label == job.worker and w.memory_used_bytes), None
            )
            if mine is not None:  # with several GPUs, the one this job runs on
                where, used, total = mine.label, mine.memory_used_bytes, mine.memory_total_bytes
            parts.append(f"{where} memory {size(used)}" + (f" / {size(total)}" if total else ""))
        self.query_one("#live-info", Label).update("   ".join(parts))

    # actions

    async def action_cancel_job(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        if not self.jobs:
            self.notify("no job to cancel", severity="warning")
            return
        try:
            job_id = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # no row under the cursor
            job_id = None
        under = self.jobs.get(job_id) if job_id is not None else None
        job = under or self.running or next(iter(self.jobs.values()))

        from engine.protocol import Cancel

        async def answered(yes: bool | None) -> None:
            if yes and await self.call(Cancel(job_id=job.id)) is not None:
                self.notify(f"job {job.id[:8]} cancelling")

        question = f"Cancel the {job.status} job {job.id[:8]} ({job.prompt[:40]!r})?"
        self.app.push_screen(Confirm(question, "Cancel job"), answered)

    async def action_move_job(self, to: Literal["top", "up", "down"]) -> None:
        """Move the queued job under the cursor (up, down, top): the engine's queue_changed redraws it."""
        job = self.jobs.get(self.selected_id() or "")
        if job is None or job.status != "queued":
            self.notify("choose a queued job to move (running ones have left the queue)", severity="warning")
            return
        from engine.protocol import MoveJob

        await self.call(MoveJob(job_id=job.id, to=to))

    async def action_pause_queue(self) -> None:
        from engine.protocol import PauseQueue

        reply = await self.call(PauseQueue(paused=not self.paused))
        if reply is not None:
            said = "paused: no queued job starts until p resumes it" if reply.paused else "resumed"
            self.notify(f"queue {said}")
