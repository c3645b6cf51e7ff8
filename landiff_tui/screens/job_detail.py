"""One job in full (parameters, timings, outputs, a frame or the playing video) and its actions."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from rich.markup import escape
from textual.app import App, ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from engine.job_words import quality_lines, resumed_words, waiting_words
from engine.params import video_fps

from ..keymap import bindings, key_of
from ..views.base import EngineApp, checked, engine_app
from ..widgets.preview import FramePreview, FrameStrip
from ..words import param_lines, status_words
from .confirm import Confirm

if TYPE_CHECKING:
    from engine.protocol import JobSummary, QualityRecord


@dataclass
class JobActions:
    app: App

    @property
    def engine(self) -> EngineApp:
        return engine_app(self.app)

    async def rerun(self, job: JobSummary, quiet: bool = False) -> str | None:
        from engine.protocol import Submit

        request = checked(self.app, lambda: Submit.model_validate({"params": job.params}))
        reply = await self.engine.call_engine(request) if request is not None else None
        if reply is not None:
            if not quiet:
                self.app.notify(f"re-run queued as {reply.job_id[:8]}")
            return reply.job_id
        return None

    def rerun_all(self, jobs: list[JobSummary], after: Callable[[], None] | None = None) -> None:
        """Several jobs re-run, once the user said yes to the count; `after`: once they are sent."""

        async def answered(yes: bool | None) -> None:
            if yes:
                queued = [await self.rerun(job, quiet=True) for job in jobs]
                done = sum(job_id is not None for job_id in queued)
                self.app.notify(
                    f"{done} of {len(jobs)} re-runs queued" if done < len(jobs) else f"{done} re-runs queued"
                )
                if after is not None:
                    after()

        self.app.push_screen(Confirm(f"Re-run the {len(jobs)} marked jobs?", "Re-run"), answered)

    def edit(self, job: JobSummary) -> None:
        from ..views.generate import GenerateView

        while len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        self.app.query_one(GenerateView).edit(job)
        self.engine.action_show_tab("generate")
        submit = key_of("generate", "submit")
        self.app.notify(f"the job's prompt and parameters are in the form: change them and submit ({submit})")

    def copy(self, text: str, what: str) -> None:
        if not text:
            self.app.notify(f"this job has no {what}", severity="warning")
            return
        self.app.copy_to_clipboard(text)  # OSC 52: reaches the local clipboard over SSH too
        # the terminal may ignore OSC 52 and cannot tell us: say what was done, not that it worked
        self.app.notify(
            f"{what} sent to the terminal's clipboard (OSC 52; some terminals must allow it first)"
        )

    def delete(self, job: JobSummary, after=None) -> None:
        from engine.protocol import DeleteJob

        async def answered(yes: bool | None) -> None:
            if yes and await self.engine.call_engine(DeleteJob(job_id=job.id, delete_files=True)) is not None:
                self.app.notify(f"job {job.id[:8]} and its files deleted")
                if after is not None:
                    after()

        prompt = job.prompt[:50]
        self.app.push_screen(
            Confirm(f"Delete job {job.id[:8]} ({prompt!r}) and its files?", "Delete"), answered
        )

    def delete_all(self, jobs: list[JobSummary], after: Callable[[], None] | None = None) -> None:
        """Several jobs and their files deleted, once the user said yes to the count."""
        from engine.protocol import DeleteJob

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            done = 0
            for job in jobs:
                request = DeleteJob(job_id=job.id, delete_files=True)
                done += await self.engine.call_engine(request) is not None
            self.app.notify(
                f"{done} jobs and their files deleted"
                + (f" ({len(jobs) - done} refused)" if done < len(jobs) else "")
            )
            if after is not None:
                after()

        self.app.push_screen(
            Confirm(f"Delete the {len(jobs)} marked jobs and their files?", "Delete"), answered
        )


def job_actions(app: App) -> JobActions:
    return JobActions(app)


def file_link(path: str) -> str:
    """An OSC 8 hyperlink's target for a file of this machine: `file://HOST/path`, the host named so that a
    terminal on another machine (over SSH) can tell the file is not its own (as `ls --hyperlink` does)."""
    return f"file://{quote(socket.gethostname())}{quote(str(Path(path).absolute()))}"


def describe(job: JobSummary, waiting: str | None = None) -> str:
    """The job's page; `waiting`: why a queued one has not started (job_words.waiting_words)."""
    status = escape(status_words(job))
    lines = [f"[b]{job.id}[/b]  {status}  ({job.model} model, engine {job.engine_version})", ""]
    if waiting and job.status == "queued":
        lines += [f"waiting: {escape(waiting)}", ""]
    if job.error:
        lines += [f"[red]{job.status}: {escape(job.error)}[/red]", ""]
    lines.append(escape(job.prompt))
    lines.append("")
    lines += [f"{name:>13}: {escape(text)}" for name, text in param_lines(job)]
    lines.append(f"{'created':>13}: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.created_at))}")
    if job.timings:
        lines.append("")
        lines += [f"{name:>13}: {value:.2f} s" for name, value in job.timings.items()]
    if job.peak_memory_bytes:
        lines.append(f"{'peak memory':>13}: {job.peak_memory_bytes / 2**30:.2f} GiB")
    if job.worker:
        requeued = f" (re-queued {job.requeues} time(s): a worker was lost)" if job.requeues else ""
        lines.append(f"{'worker':>13}: {escape(job.worker)}{requeued}")
    if resumed := resumed_words(job):
        lines.append(f"{'resumed':>13}: {escape(resumed)}")
    if job.video_path:
        lines.append("")
        lines += [f"{label:>13}: {escape(text)}" for label, text in quality_lines(job.quality)]
    lines.append("")
    lines.append(f"{'job id':>13}: {job.id}")
    for name, path in (("video", job.video_path), ("tokens", job.tokens_path), ("sidecar", job.sidecar_path)):
        if path:
            lines.append(f'{name:>13}: [link="{file_link(path)}"]{escape(path)}[/link]')  # quoted: no "
    return "\n".join(lines)


class JobDetail(Screen):
    BINDINGS = bindings("detail")

    def __init__(self, job_id: str, play: bool = False):
        super().__init__()
        self.job_id, self.play_at_once = job_id, play
        self.job: JobSummary | None = None
        self.waiting: str | None = None  # why it waits, while it is queued

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="detail"):
            with VerticalScroll(id="detail-text"):
                yield Static("loading...", id="detail-body", markup=True)
            yield FramePreview(id="detail-preview", cells=(40, 14))
        strip = FrameStrip(id="detail-strip")  # the video's frames along the bottom, once read
        strip.display = False
        yield strip
        yield Footer()

    async def on_mount(self) -> None:
        from engine.protocol import GetJob

        reply = await engine_app(self.app).call_engine(GetJob(job_id=self.job_id))
        if reply is None:
            self.app.pop_screen()
            return
        self.job = reply.job
        if self.job.status == "queued":  # why it waits: its queue paused, no worker, the jobs ahead
            from engine.protocol import Status

            status = await engine_app(self.app).call_engine(Status())
            self.waiting = None if status is None else waiting_words(status, self.job.id)
        self.query_one("#detail-body", Static).update(describe(self.job, self.waiting))
        preview = self.query_one(FramePreview)
        if self.job.thumbnail_path or self.job.status in ("queued", "running"):
            preview.show_image(self.job.thumbnail_path)
        else:
            why = " (its error is beside)" if self.job.error else ""
            preview.update(f"no video: the job {status_words(self.job)}{why}")
        if self.job.video_path and Path(self.job.video_path).is_file():
            self.query_one(FrameStrip).load(self.job.video_path)
        if self.play_at_once:
            self.action_play()

    def show_quality(self, quality: QualityRecord) -> None:
        """The probe's findings arrived (a job_quality event) while this job is shown."""
        if self.job is not None:
            self.job = self.job.model_copy(update={"quality": quality})
            self.query_one("#detail-body", Static).update(describe(self.job, self.waiting))

    async def action_rerun(self) -> None:
        if self.job:
            await job_actions(self.app).rerun(self.job)

    def action_edit(self) -> None:
        if self.job:
            job_actions(self.app).edit(self.job)

    def action_copy_prompt(self) -> None:
        if self.job:
            job_actions(self.app).copy(self.job.prompt, "prompt")

    def action_copy_path(self) -> None:
        if self.job:
            job_actions(self.app).copy(self.job.video_path or "", "video path")

    def action_play(self) -> None:
        preview = self.query_one(FramePreview)
        if preview.playing and self.job is not None:
            preview.show_image(self.job.thumbnail_path)
        elif self.job and self.job.video_path:
            preview.play(self.job.video_path, fps=video_fps(self.job.params))
        else:
            self.notify("this job has no video", severity="warning")

    def action_delete(self) -> None:
        if self.job:
            job_actions(self.app).delete(self.job, after=self.app.pop_screen)
