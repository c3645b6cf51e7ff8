"""Gallery: every past job, newest first, searched as you type, paged through the protocol.

The search box has the keys when the tab shows, so the job actions take keys that text never produces, and
deleting asks first. The list moves, sorts and marks with letters (j/k, g/G, s, space: the keymap's), none
of which changes a job; re-run and delete act on the marked jobs when some are.

Sorting by the created column is the engine's (newest or oldest first, page by page, over the whole
history); by another column it orders the jobs loaded so far, and the count line says so while some are
not loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
from ..widgets.lists import ListTable
from ..words import job_plan, kept_chunks, legend, length_cell, short_status
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


def length_s(job: JobSummary) -> float | None:
    """The seconds of video the length cell shows, to sort by."""
    plan = job_plan(job)
    if plan is None:
        return None
    kept = kept_chunks(job)
    return (plan.frames if kept is None else plan.frames_after(kept)) / plan.fps


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[JobSummary], str]
    # what the column sorts by (None: nothing, a missing value: below every other); the first sort by it
    # is ascending unless `descending`
    sort: Callable[[JobSummary], Any] | None = None
    descending: bool = False


MARK = "✓"  # a marked job's mark column

# in the table's order; the prompt takes what the others leave
COLUMNS = [
    Column("mark", " ", lambda job: ""),  # the marks; a click on its header marks all or none
    Column("status", "status", short_status, lambda job: short_status(job)),
    Column("created", "created", created_text, lambda job: job.created_at, descending=True),
    Column("length", "length", length_cell, length_s),
    Column("fps", "fps", lambda job: str(video_fps(job.params)), lambda job: video_fps(job.params)),
    Column(
        "seed",
        "seed",
        lambda job: str(job.params.get("seed", "")),
        lambda job: number(job.params.get("seed")),
    ),
    Column(
        "steps",
        "steps",
        lambda job: str(job.params.get("steps", "")),
        lambda job: number(job.params.get("steps")),
    ),
    Column(
        "clip",
        "CLIP",
        lambda job: clip_text(job.quality),
        lambda job: job.quality.clip.mean if job.quality and job.quality.clip else None,
        descending=True,
    ),
    Column(
        "prompt", "prompt", lambda job: job.prompt.replace("\n", " ")[:200], lambda job: job.prompt.lower()
    ),
]
BY_KEY = {column.key: column for column in COLUMNS}
SORTED = {True: "▼", False: "▲"}  # the sorted column's label ends with its direction (descending: ▼)
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


def sort_key(column: Column) -> Callable[[JobSummary], tuple[bool, Any]]:
    """The column's sort key, a missing value below every other."""
    assert column.sort is not None
    by = column.sort
    return lambda job: (by(job) is not None, by(job) if by(job) is not None else 0)


PAGE = 100
Layout = tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]  # the columns' keys, widths and headers
SEARCH_DELAY_S = 0.15


class GalleryTable(ListTable):
    """The list of jobs: up on the first row goes to the search box (k stays in the list), and letters are
    the list's keys (the keymap's), not the search's."""

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
        self.rows: list[JobSummary] = []  # the loaded jobs as the list shows them
        self.loaded: list[JobSummary] = []  # ...and in the engine's order (`oldest`: oldest first)
        self.total = 0
        self.sorted_by = "created"  # a column's key
        self.descending = True
        self.oldest = False  # the engine's order of the loaded pages
        self.cursor_to: str | None = (
            None  # the job the cursor goes to once the first page of a new order loads
        )
        self.marked: set[str] = set()  # job ids; cleared by a new search or status, or by escape
        self.generation = 0  # bumps with every new query, so late pages of an old one are dropped
        self.search_timer: Timer | None = None
        self.fetching = False
        self.dirty = True
        self.last_query_s: float | None = None
        self.widths: dict[str, int] = {}  # each column's widest content among the rows (its label at least)
        self.drawn: Layout | None = None  # the table's columns, widths and headers

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
                self.loaded = [self.rows[index] if job.id == row.id else job for job in self.loaded]
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
        return ListJobs(
            search=search or None,
            status=chosen,
            sort="oldest" if self.oldest else "newest",
            offset=offset,
            limit=PAGE,
        )

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
        chosen = self.cursor_job_id()
        if offset == 0:
            self.rows, self.loaded, self.widths = [], [], {}
            table.clear()
        self.total = reply.total
        added = []
        for job in reply.jobs:
            if any(row.id == job.id for row in self.loaded[-PAGE:]):
                continue  # a job added meanwhile shifted the pages
            self.loaded.append(job)
            added.append(job)
        self.measure_rows(added)
        if self.sorted_by == "created":  # the engine's order: the new page goes below
            self.rows += added
            if self.draw_columns():
                self.add_job_rows(added)
            if offset == 0 and self.cursor_to in (ids := [job.id for job in self.rows]):
                table.move_cursor(row=ids.index(self.cursor_to))  # the job it was on, in the new order
            self.cursor_to = None
        else:  # sorted here: the new page among the others, the cursor on its job
            self.order_rows()
            self.draw_columns(force=True, chosen=chosen)
        self.draw_count()
        self.last_query_s = time.perf_counter() - started

    def draw_count(self) -> None:
        shown = (
            f"{len(self.rows)} of {self.total} job(s)"
            if self.total > len(self.rows)
            else f"{self.total} job(s)"
        )
        if self.sorted_by != "created" and self.total > len(self.rows):  # honest: only those loaded
            shown += f", sorted by {BY_KEY[self.sorted_by].label} as loaded"
        if marked := len(self.marked_jobs()):
            shown += f", {marked} marked"
        hint = f"   {key_of('gallery', 'open')}: details   {key_of('app', 'keys')}: keys"
        words = legend(self.rows)
        self.query_one("#gallery-count", Label).update(shown + hint + (f"\n{words}" if words else ""))

    # sorting

    def order_rows(self) -> None:
        """`rows`: the loaded jobs in the chosen order (created: the engine's; another column: sorted here,
        stable, so equal ones stay newest first)."""
        if self.sorted_by == "created":
            self.rows = list(self.loaded)
        else:
            self.rows = sorted(self.loaded, key=sort_key(BY_KEY[self.sorted_by]), reverse=self.descending)

    def sort_by(self, key: str, descending: bool) -> None:
        chosen = self.cursor_job_id()
        self.sorted_by, self.descending = key, descending
        if key == "created" and self.oldest != (not descending):  # the engine's order: load it anew
            self.oldest, self.cursor_to = not descending, chosen
            self.draw_columns(force=True, chosen=chosen)
            self.reload()
            return
        self.order_rows()
        self.draw_columns(force=True, chosen=chosen)
        self.draw_count()

    def sortable(self) -> list[str]:
        """The columns shown that sort, in the table's order."""
        shown = self.drawn[0] if self.drawn is not None else tuple(column.key for column in COLUMNS)
        return [key for key in shown if BY_KEY[key].sort is not None]

    def action_sort(self) -> None:
        """Sort by the next column shown (after the last, the first), in its first direction."""
        keys = self.sortable()
        at = keys.index(self.sorted_by) if self.sorted_by in keys else -1
        key = keys[(at + 1) % len(keys)]
        self.sort_by(key, BY_KEY[key].descending)

    def action_reverse(self) -> None:
        self.sort_by(self.sorted_by, not self.descending)

    @on(DataTable.HeaderSelected, "#gallery-table")
    def header_clicked(self, event: DataTable.HeaderSelected) -> None:
        """A column's header: sort by it; its header again: the other way; the marks' header: mark all."""
        key = str(event.column_key.value)
        if key == "mark":
            self.action_mark_all()
        elif BY_KEY[key].sort is not None:
            self.sort_by(key, not self.descending if key == self.sorted_by else BY_KEY[key].descending)

    # marks

    def marked_jobs(self) -> list[JobSummary]:
        """The marked jobs in the list, in its order (a mark hidden by a filter is dropped with it)."""
        return [job for job in self.rows if job.id in self.marked]

    def set_marks(self, marked: set[str]) -> None:
        table = self.query_one("#gallery-table", DataTable)
        for job_id in marked ^ self.marked:
            if job_id in table.rows:
                table.update_cell(job_id, "mark", MARK if job_id in marked else "")
        self.marked = marked
        self.draw_count()

    def action_mark(self) -> None:
        """Mark the job under the cursor (or unmark it), and move down, to mark the next one with a key."""
        if (job := self.selected()) is not None:
            self.set_marks(self.marked ^ {job.id})
            self.query_one(GalleryTable).action_row("down")

    def action_mark_all(self) -> None:
        """Mark every job in the list; with every one marked already, none."""
        every = {job.id for job in self.rows}
        self.set_marks(set() if every <= self.marked else every)

    # the table's columns: those that fit, the prompt taking the room they leave

    def measure_rows(self, jobs: list[JobSummary]) -> None:
        """Widens the columns' recorded widths to these jobs' cells."""
        for column in COLUMNS:
            if column.key != "prompt":
                widest = max((len(column.cell(job)) for job in jobs), default=0)
                self.widths[column.key] = max(self.widths.get(column.key, 0), len(column.label), widest)

    def label(self, column: Column) -> str:
        """A column's header: the sorted one ends with its direction."""
        return column.label + (SORTED[self.descending] if column.key == self.sorted_by else "")

    def column_layout(self) -> Layout:
        """The columns that fit the table's width now, each one's width and its header."""
        table = self.query_one("#gallery-table", DataTable)
        width = table.size.width or self.app.size.width - 2  # not laid out yet: the screen's, less padding
        width -= table.styles.scrollbar_size_vertical  # kept free: the list scrolls once it is long
        widths = {column.key: len(self.label(column)) for column in COLUMNS}
        widths |= {key: max(widths[key], wide) for key, wide in self.widths.items()}
        keys, prompt = fit_columns(width, widths, 2 * table.cell_padding)
        return (
            tuple(keys),
            tuple(prompt if key == "prompt" else widths[key] for key in keys),
            tuple(self.label(BY_KEY[key]) for key in keys),
        )

    def cursor_job_id(self) -> str | None:
        """The job under the table's cursor, as the table has it (`rows` may be in a new order already)."""
        table = self.query_one("#gallery-table", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def draw_columns(self, force: bool = False, chosen: str | None = None) -> bool:
        """The table's columns as `column_layout` has them; a changed layout (or `force`) draws every row
        again (and returns False: nothing is left to add), the cursor on the job `chosen` (by default the
        one under it), else on its row."""
        layout = self.column_layout()
        if layout == self.drawn and not force:
            return True
        table = self.query_one("#gallery-table", DataTable)
        cursor = table.cursor_row
        chosen = chosen or self.cursor_job_id()
        table.clear(columns=True)
        for key, width, label in zip(*layout, strict=True):
            table.add_column(label, width=width, key=key)
        self.drawn = layout
        self.add_job_rows(self.rows)
        if self.rows:
            ids = [job.id for job in self.rows]
            table.move_cursor(row=ids.index(chosen) if chosen in ids else min(cursor, len(self.rows) - 1))
        return False

    def add_job_rows(self, jobs: list[JobSummary]) -> None:
        assert self.drawn is not None
        table = self.query_one("#gallery-table", DataTable)
        for job in jobs:
            cells = (
                (MARK if job.id in self.marked else "") if key == "mark" else BY_KEY[key].cell(job)
                for key in self.drawn[0]
            )
            table.add_row(*cells, key=job.id)

    def on_resize(self, event: events.Resize) -> None:
        if self.drawn is not None:
            self.draw_columns()

    @on(Input.Changed, "#search")
    def search_changed(self) -> None:
        self.marked = set()  # another list: the marks were of the old one
        if self.search_timer is not None:
            self.search_timer.stop()
        self.search_timer = self.set_timer(SEARCH_DELAY_S, self.reload)

    @on(Select.Changed, "#status")
    def status_changed(self) -> None:
        self.marked = set()
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

    def action_clear(self) -> None:
        """The marks first (the list keeps the focus), else the search (the box gets it)."""
        if self.marked:
            self.set_marks(set())
        else:
            self.action_clear_search()

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
        """The marked jobs, when some are (asking first), else the one under the cursor."""
        if marked := self.marked_jobs():
            job_actions(self.app).rerun_all(marked, after=lambda: self.set_marks(set()))
        elif (job := self.selected()) is not None:
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
        """The marked jobs, when some are, else the one under the cursor; asks first, once."""
        if marked := self.marked_jobs():
            job_actions(self.app).delete_all(marked, after=lambda: self.set_marks(set()))
        elif (job := self.selected()) is not None:
            job_actions(self.app).delete(job)
