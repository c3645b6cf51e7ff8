"""Gallery: every past job, newest first, searched as you type, paged through the protocol.

Typing always reaches the search box (it has the focus; a letter typed in the list moves there), so the
actions take keys that text never produces, and deleting asks first.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select

from engine.params import video_fps
from engine.wire import JOB_STATUSES, MAX_PROMPT_CHARS

from ..keymap import bindings, key_of
from ..messages import EngineConnected, JobDeleted, JobEnded, JobMeasured, JobQueued
from ..screens.job_detail import JobDetail, job_actions
from .base import View

if TYPE_CHECKING:
    from textual.timer import Timer

    from engine.protocol import JobSummary, ListJobs


@lru_cache(maxsize=256)
def length_text(model: str, frames: int | None, overlap: int | None) -> str:
    """A job's video length as its parameters ask for it: seconds (frames), by the model's rules."""
    from engine.generation.lengths import plan_length, rules_for

    try:
        plan = plan_length(rules_for(model), frames, overlap)
    except (KeyError, ValueError):
        return "?" if frames is None else f"{frames} fr"
    return f"{plan.seconds:.1f} s ({plan.frames})"


def clip_text(quality: dict[str, Any] | None) -> str:
    """A job's mean CLIP score against its prompt, for its row: "27.5"; "-" when the probe measured the job
    without CLIP (no CLIP weights, or it failed); "" before it has measured."""
    if quality is None:
        return ""
    clip = quality.get("clip")
    return "-" if clip is None else f"{clip['mean']:.1f}"


def job_length(job: JobSummary) -> str:
    return length_text(job.model, job.params.get("frames"), job.params.get("overlap"))


PAGE = 100
SEARCH_DELAY_S = 0.15


class GalleryTable(DataTable):
    """The list of jobs; a printable key typed here goes to the search box, as does up on the first row."""

    def on_key(self, event: events.Key) -> None:
        if event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            search = self.screen.query_one("#search", Input)
            search.focus()
            search.cursor_position = len(search.value)
            search.insert_text_at_cursor(event.character)

    def action_cursor_up(self) -> None:
        if self.cursor_row <= 0:
            self.screen.query_one("#search", Input).focus()
        else:
            super().action_cursor_up()


class GalleryView(View):
    FOCUS = "#search"
    BINDINGS = bindings("gallery")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[JobSummary] = []
        self.total = 0
        self.generation = 0  # bumps with every new query, so late pages of an old one are dropped
        self.search_timer: Timer | None = None
        self.fetching = False
        self.dirty = True
        self.last_query_s: float | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="gallery-filters"):
            yield Input(
                placeholder="type to search prompts",
                id="search",
                select_on_focus=False,
                max_length=MAX_PROMPT_CHARS,  # what the engine searches for at most
            )
            yield Select([(status, status) for status in JOB_STATUSES], prompt="any status", id="status")
        table = GalleryTable(id="gallery-table", cursor_type="row", zebra_stripes=True)
        self.columns = table.add_columns(
            "status", "created", "length", "fps", "seed", "steps", "CLIP", "prompt"
        )
        yield table
        yield Label("", id="gallery-count")

    # loading

    def shown(self) -> None:
        if self.dirty:
            self.reload()

    def on_engine_connected(self, message: EngineConnected) -> None:
        self.reload()

    def on_job_queued(self, message: JobQueued) -> None:
        self.list_changed()

    def on_job_ended(self, message: JobEnded) -> None:
        self.list_changed()

    def on_job_measured(self, message: JobMeasured) -> None:
        table = self.query_one("#gallery-table", DataTable)
        if message.event.job_id in table.rows:  # its CLIP cell, at once
            table.update_cell(
                message.event.job_id, self.columns[6], clip_text(message.event.quality.model_dump())
            )
        for screen in self.app.screen_stack:  # a job's detail open on top of the Gallery shows it at once
            if isinstance(screen, JobDetail) and screen.job_id == message.event.job_id:
                screen.show_quality(message.event.quality.model_dump())

    def on_job_deleted(self, message: JobDeleted) -> None:
        self.list_changed()

    def list_changed(self) -> None:
        self.dirty = True
        if self.is_visible_tab():
            self.reload()

    def is_visible_tab(self) -> bool:
        tabs = self.app.query_one("#tabs")
        return getattr(tabs, "active", None) == "gallery"

    def reload(self) -> None:
        self.dirty = False
        self.generation += 1
        self.run_worker(self.load(self.generation, 0), group="gallery", exclusive=True)

    def page(self, offset: int) -> ListJobs:
        """The request of the page at `offset` of what the search box and the status box ask for."""
        from engine.protocol import ListJobs

        search = self.query_one("#search", Input).value.strip()
        status = self.query_one("#status", Select).value
        chosen = status if isinstance(status, str) else None
        return ListJobs(search=search or None, status=chosen, offset=offset, limit=PAGE)

    async def load(self, generation: int, offset: int) -> None:
        started = time.perf_counter()
        self.fetching = True
        try:
            reply = await self.call(self.page(offset))
        finally:
            self.fetching = False
        if reply is None or generation != self.generation:
            return
        table = self.query_one("#gallery-table", DataTable)
        if offset == 0:
            table.clear()
            self.rows = []
        self.total = reply.total
        for job in reply.jobs:
            if any(row.id == job.id for row in self.rows[-PAGE:]):
                continue  # a job added meanwhile shifted the pages
            self.rows.append(job)
            created = time.strftime("%m-%d %H:%M", time.localtime(job.created_at))
            table.add_row(
                job.status,
                created,
                job_length(job),
                str(video_fps(job.params)),
                str(job.params.get("seed", "")),
                str(job.params.get("steps", "")),
                clip_text(job.quality),
                job.prompt.replace("\n", " ")[:200],
                key=job.id,
            )
        shown = (
            f"{len(self.rows)} of {self.total} job(s)"
            if self.total > len(self.rows)
            else f"{self.total} job(s)"
        )
        hint = f"   {key_of('gallery', 'open')}: details   {key_of('app', 'keys')}: keys"
        self.query_one("#gallery-count", Label).update(shown + hint)
        self.last_query_s = time.perf_counter() - started

    @on(Input.Changed, "#search")
    def search_changed(self) -> None:
        if self.search_timer is not None:
            self.search_timer.stop()
        self.search_timer = self.set_timer(SEARCH_DELAY_S, self.reload)

    @on(Select.Changed, "#status")
    def status_changed(self) -> None:
        self.reload()

    @on(Input.Submitted, "#search")
    def search_submitted(self) -> None:
        self.action_open()

    def on_key(self, event: events.Key) -> None:
        if event.key == "down" and self.query_one("#search", Input).has_focus:
            event.stop()
            self.query_one("#gallery-table").focus()

    @on(DataTable.RowHighlighted, "#gallery-table")
    def near_the_end(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row >= len(self.rows) - 20 and len(self.rows) < self.total and not self.fetching:
            self.fetching = True
            self.run_worker(self.load(self.generation, len(self.rows)), group="gallery-more")

    @on(DataTable.RowSelected, "#gallery-table")
    def row_selected(self) -> None:
        self.action_open()

    # actions

    def selected(self, quiet: bool = False) -> JobSummary | None:
        table = self.query_one("#gallery-table", DataTable)
        if not self.rows or table.cursor_row is None or table.cursor_row >= len(self.rows):
            if not quiet:
                self.notify("no job selected: the list is empty", severity="warning")
            return None
        return self.rows[table.cursor_row]

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_clear_search(self) -> None:
        search = self.query_one("#search", Input)
        search.value = ""
        search.focus()

    def action_open(self) -> None:
        job = self.selected()
        if job is not None:
            self.app.push_screen(JobDetail(job.id))

    def action_play(self) -> None:
        job = self.selected()
        if job is not None:
            self.app.push_screen(JobDetail(job.id, play=True))

    async def action_rerun(self) -> None:
        if (job := self.selected()) is not None:
            await job_actions(self.app).rerun(job)

    def action_edit(self) -> None:
        if (job := self.selected()) is not None:
            job_actions(self.app).edit(job)

    def action_copy_prompt(self) -> None:
        if (job := self.selected()) is not None:
            job_actions(self.app).copy(job.prompt, "prompt")

    def action_copy_path(self) -> None:
        if (job := self.selected()) is not None:
            job_actions(self.app).copy(job.video_path or "", "video path")

    def action_delete(self) -> None:
        if (job := self.selected()) is not None:
            job_actions(self.app).delete(job)
