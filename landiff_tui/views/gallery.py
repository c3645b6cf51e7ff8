"""Gallery: every past job, newest first, searched as you type, paged through the protocol.

Typing always reaches the search box (it has the focus; a letter typed in the list moves there), so the
actions take keys that text never produces, and deleting asks first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select

from engine.params import video_fps
from engine.wire import JOB_STATUSES, MAX_PROMPT_CHARS

from ..keymap import KEYMAP, bindings, key_of
from ..messages import EngineConnected, JobDeleted, JobEnded, JobMeasured, JobQueued
from ..screens.job_detail import JobDetail, job_actions
from ..words import legend, length_cell, short_status
from .base import View

if TYPE_CHECKING:
    from textual.timer import Timer

    from engine.protocol import JobSummary, ListJobs, QualityRecord


def clip_text(quality: QualityRecord | None) -> str:
    """A job's mean CLIP score against its prompt, for its row: "27.5"; "-" when the probe measured the job
    without CLIP (no CLIP weights, or it failed); "" before it has measured."""
    if quality is None:
        return ""
    return "-" if quality.clip is None else f"{quality.clip.mean:.1f}"


def created_text(job: JobSummary) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(job.created_at))


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[JobSummary], str]


# in the table's order; the prompt takes what the others leave
COLUMNS = [
    Column("status", "status", short_status),
    Column("created", "created", created_text),
    Column("length", "length", length_cell),
    Column("fps", "fps", lambda job: str(video_fps(job.params))),
    Column("seed", "seed", lambda job: str(job.params.get("seed", ""))),
    Column("steps", "steps", lambda job: str(job.params.get("steps", ""))),
    Column("clip", "CLIP", lambda job: clip_text(job.quality)),
    Column("prompt", "prompt", lambda job: job.prompt.replace("\n", " ")[:200]),
]
# the columns a narrow terminal drops, the last first, so that the prompt keeps MIN_PROMPT cells (the job's
# page has them all)
OPTIONAL = ("clip", "seed", "steps", "fps")
MIN_PROMPT = 30


def fit_columns(width: int, widths: dict[str, int], padding: int) -> tuple[list[str], int]:
    """The columns shown in `width` cells, in the table's order, and the prompt's width: every column but
    the optional ones, then those that leave the prompt MIN_PROMPT cells, in OPTIONAL's order. `widths`:
    each column's content (its label or its widest cell); `padding`: a column's cells beside its content."""
    shown = {column.key for column in COLUMNS if column.key not in OPTIONAL}
    used = sum(widths[key] + padding for key in shown if key != "prompt") + padding
    for key in OPTIONAL:
        if width - used - widths[key] - padding < MIN_PROMPT:
            break
        shown.add(key)
        used += widths[key] + padding
    return [column.key for column in COLUMNS if column.key in shown], max(width - used, 8)


@lru_cache(maxsize=1)
def app_keys() -> frozenset[str]:
    return frozenset(key for keys in KEYMAP["app"].values() for key in (*keys.keys, *keys.also))


PAGE = 100
SEARCH_DELAY_S = 0.15


class GalleryTable(DataTable):
    """The list of jobs; a printable key typed here goes to the search box, as does up on the first row; a
    key the whole app binds (?: the key list) does what it does everywhere outside a text field."""

    def on_key(self, event: events.Key) -> None:
        if event.is_printable and event.character and event.key not in app_keys():
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
        self.widths: dict[str, int] = {}  # each column's widest content among the rows (its label at least)
        self.drawn: tuple[tuple[str, ...], tuple[int, ...]] | None = None  # the table's columns and widths

    def compose(self) -> ComposeResult:
        with Horizontal(id="gallery-filters"):
            yield Input(
                placeholder="type to search prompts",
                id="search",
                select_on_focus=False,
                max_length=MAX_PROMPT_CHARS,  # what the engine searches for at most
            )
            yield Select([(status, status) for status in JOB_STATUSES], prompt="any status", id="status")
        yield GalleryTable(id="gallery-table", cursor_type="row", zebra_stripes=True)
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
        quality = message.event.quality
        for index, row in enumerate(self.rows):
            if row.id == message.event.job_id:  # its CLIP cell, at once
                self.rows[index] = row.model_copy(update={"quality": quality})
                self.measure_rows([self.rows[index]])
                if self.draw_columns() and "clip" in (self.drawn or ((), ()))[0]:
                    table = self.query_one("#gallery-table", DataTable)
                    table.update_cell(row.id, "clip", clip_text(quality))
        for screen in self.app.screen_stack:  # a job's detail open on top of the Gallery shows it at once
            if isinstance(screen, JobDetail) and screen.job_id == message.event.job_id:
                screen.show_quality(quality)

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
        if offset == 0:
            self.rows, self.widths = [], {}
            self.query_one("#gallery-table", DataTable).clear()
        self.total = reply.total
        added = []
        for job in reply.jobs:
            if any(row.id == job.id for row in self.rows[-PAGE:]):
                continue  # a job added meanwhile shifted the pages
            self.rows.append(job)
            added.append(job)
        self.measure_rows(added)
        if self.draw_columns():
            self.add_job_rows(added)
        shown = (
            f"{len(self.rows)} of {self.total} job(s)"
            if self.total > len(self.rows)
            else f"{self.total} job(s)"
        )
        hint = f"   {key_of('gallery', 'open')}: details   {key_of('app', 'keys')}: keys"
        words = legend(self.rows)
        self.query_one("#gallery-count", Label).update(shown + hint + (f"\n{words}" if words else ""))
        self.last_query_s = time.perf_counter() - started

    # the table's columns: those that fit, the prompt taking the room they leave

    def measure_rows(self, jobs: list[JobSummary]) -> None:
        """Widens the columns' recorded widths to these jobs' cells."""
        for column in COLUMNS:
            if column.key != "prompt":
                widest = max((len(column.cell(job)) for job in jobs), default=0)
                self.widths[column.key] = max(self.widths.get(column.key, 0), len(column.label), widest)

    def column_layout(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The columns that fit the table's width now, and each one's width."""
        table = self.query_one("#gallery-table", DataTable)
        width = table.size.width or self.app.size.width - 2  # not laid out yet: the screen's, less padding
        width -= table.styles.scrollbar_size_vertical  # kept free: the list scrolls once it is long
        widths = {**{column.key: len(column.label) for column in COLUMNS}, **self.widths}
        keys, prompt = fit_columns(width, widths, 2 * table.cell_padding)
        return tuple(keys), tuple(prompt if key == "prompt" else widths[key] for key in keys)

    def draw_columns(self) -> bool:
        """The table's columns as `column_layout` has them; a changed layout draws every row again (and
        returns False: nothing is left to add)."""
        layout = self.column_layout()
        if layout == self.drawn:
            return True
        table = self.query_one("#gallery-table", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        labels = {column.key: column.label for column in COLUMNS}
        for key, width in zip(*layout, strict=True):
            table.add_column(labels[key], width=width, key=key)
        self.drawn = layout
        self.add_job_rows(self.rows)
        if self.rows:
            table.move_cursor(row=min(cursor, len(self.rows) - 1))
        return False

    def add_job_rows(self, jobs: list[JobSummary]) -> None:
        assert self.drawn is not None
        cells = [column.cell for key in self.drawn[0] for column in COLUMNS if column.key == key]
        table = self.query_one("#gallery-table", DataTable)
        for job in jobs:
            table.add_row(*(cell(job) for cell in cells), key=job.id)

    def on_resize(self, event: events.Resize) -> None:
        if self.drawn is not None:
            self.draw_columns()

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
