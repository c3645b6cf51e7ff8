"""Queue: queued and running jobs; the running one live, stage by stage and chunk by chunk."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, ProgressBar

from ..client import RequestError
from ..screens.confirm import Confirm
from ..widgets.preview import FramePreview
from .base import View

STAGES = [
    ("text", "text encoding"),
    ("tokens", "tokens"),
    ("denoise", "denoising"),
    ("decode", "VAE decode"),
    ("write", "writing"),
]
ENDED = {
    "job_finished",
    "job_failed",
    "job_cancelled",
    "job_interrupted",
    "job_cancelled_partial",
    "job_deleted",
}
UNITS = {"tokens": "tok/s", "denoise": "steps/s"}


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

    def show(self, step: int, total: int, rate: float | None = None) -> None:
        self.query_one(ProgressBar).update(total=max(total, 1), progress=step)
        unit = UNITS.get(self.stage, "/s")
        detail = f"{step}/{total}" + (f"  {rate:.1f} {unit}" if rate else "")
        self.query_one(".stage-detail", Label).update(detail)

    def reset(self) -> None:
        self.query_one(ProgressBar).update(total=1, progress=0)
        self.query_one(".stage-detail", Label).update("")


class QueueView(View):
    FOCUS = "#queue-table"
    BINDINGS = [Binding("x", "cancel_job", "Cancel job")]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, Any] = {}
        self.memory: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        table = DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("status", "job", "prompt")
        yield table
        with Vertical(id="live"):
            yield Label("nothing is running", id="live-title")
            yield StageBar("chunk", "chunk")
            for stage, title in STAGES:
                yield StageBar(stage, title)
            yield Label("", id="live-info")
            yield FramePreview(id="chunk-preview", cells=(36, 6))

    def on_mount(self) -> None:
        self.query_one("#stage-chunk").display = False
        self.query_one("#chunk-preview").display = False
        self.set_interval(1.0, self.tick)

    @property
    def running(self) -> dict[str, Any] | None:
        return next((job for job in self.jobs.values() if job["status"] == "running"), None)

    # engine

    def engine_connected(self, hello: dict[str, Any]) -> None:
        self.jobs = {job["id"]: job for job in hello.get("active", [])}
        if self.running is None:
            self.progress = {}
        self.redraw()

    def engine_lost(self, state: str) -> None:
        self.query_one("#live-info", Label).update("engine not connected")

    def engine_event(self, event: dict[str, Any]) -> None:
        kind, job_id = event["event"], event.get("job_id")
        if kind == "job_queued":
            self.jobs[job_id] = {"id": job_id, "status": "queued", "prompt": event.get("prompt", "")}
            self.run_worker(self.fetch(job_id), group="queue-fetch")
        elif kind == "job_started" and job_id in self.jobs:
            self.jobs[job_id].update(status="running", started_at=time.time())
            self.progress = {"job_id": job_id}
            for bar in self.query(StageBar):
                bar.reset()
            self.query_one("#chunk-preview").display = False
        elif kind == "job_progress":
            self.progress.update(job_id=job_id, **{event["stage"]: event}, last=event)
            self.show_progress(event)
            return
        elif kind == "chunk_finished" and event.get("preview"):
            preview = self.query_one("#chunk-preview", FramePreview)
            preview.display = True
            preview.show_image(event["preview"])
            return
        elif kind in ENDED:
            self.jobs.pop(job_id, None)
            if self.progress.get("job_id") == job_id:
                self.progress = {}
        else:
            return
        self.redraw()

    async def fetch(self, job_id: str) -> None:
        reply = await self.call("get_job", job_id=job_id)
        if reply is not None and job_id in self.jobs:
            self.jobs[job_id] = {**reply["job"], "status": self.jobs[job_id]["status"]}

    async def tick(self) -> None:
        job = self.running
        if job is None or not self.app.link.connected:
            return
        self.update_info(job)
        if int(time.time()) % 3 == 0:  # memory changes slowly; asking costs the engine a call
            with contextlib.suppress(RequestError):  # the engine went away meanwhile: the link says so
                self.memory = await self.app.link.request("status")

    # drawing

    def redraw(self) -> None:
        table = self.query_one("#queue-table", DataTable)
        table.clear()
        ordered = sorted(
            self.jobs.values(), key=lambda job: (job["status"] != "running", job.get("created_at", 0))
        )
        for job in ordered:
            table.add_row(job["status"], job["id"][:8], job.get("prompt", "")[:120], key=job["id"])
        job = self.running
        title = self.query_one("#live-title", Label)
        if job is None:
            title.update("nothing is running" if not self.jobs else f"{len(self.jobs)} job(s) waiting")
            self.query_one("#live-info", Label).update("")
            for bar in self.query(StageBar):
                bar.reset()
        else:
            title.update(f"running {job['id'][:8]}: {job.get('prompt', '')[:60]}")
            self.update_info(job)

    def show_progress(self, event: dict[str, Any]) -> None:
        stage = event["stage"]
        for bar in self.query(StageBar):
            if bar.stage == stage:
                bar.show(event["step"], event["total"], event.get("rate"))
        chunks = event.get("chunks") or 1
        chunk_bar = self.query_one("#stage-chunk", StageBar)
        chunk_bar.display = chunks > 1
        if chunks > 1:
            chunk_bar.show(event.get("chunk", 1), chunks)
        job = self.running
        if job is not None:
            self.update_info(job)

    def update_info(self, job: dict[str, Any]) -> None:
        last = self.progress.get("last") or {}
        elapsed = time.time() - job["started_at"] if job.get("started_at") else None
        eta = last.get("job_eta_s", last.get("eta_s"))
        parts = [f"elapsed {duration(elapsed)}", f"ETA {duration(eta)}"]
        if last.get("video_seconds") is not None:
            parts.append(f"video so far {last['video_seconds']:.1f} s")
        if self.memory:
            used, total = self.memory.get("memory_used_bytes"), self.memory.get("memory_total_bytes")
            parts.append(
                f"{self.memory.get('device', '?')} memory {size(used)}"
                + (f" / {size(total)}" if total else "")
            )
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
        job = self.jobs.get(job_id) or self.running or next(iter(self.jobs.values()))

        async def answered(yes: bool | None) -> None:
            if yes and await self.call("cancel", job_id=job["id"]) is not None:
                self.notify(f"job {job['id'][:8]} cancelling")

        question = f"Cancel the {job['status']} job {job['id'][:8]} ({job.get('prompt', '')[:40]!r})?"
        self.app.push_screen(Confirm(question, "Cancel job"), answered)
