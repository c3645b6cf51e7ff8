"""Engine: what the engine is doing (device, models, memory, queue), its log, restart and stop."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.widgets import Label, Log, Static

from engine.durations import duration_text

from ..keymap import bindings, key_of
from ..messages import EngineConnected, EngineLost, ModelsReleased
from ..screens.confirm import Confirm
from .base import View, lane_summary

if TYPE_CHECKING:
    from engine.protocol import LaneState, WorkerState

LOG_LINES = 300


class TailLog(Log):
    """The engine's log, `tail -f` style: it shows the newest line and follows new ones, unless the user
    scrolled up, where it stays until they scroll back to the end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.follow = True
        self.writing = False  # our own changes move the scroll position too: they decide nothing
        self.tail: list[str] = []  # the engine's lines shown, as it sent them

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if not self.writing and self.size.height:  # a hidden log (another tab) has no position to keep
            self.follow = new_value >= self.max_scroll_y

    def show_tail(self, lines: list[str]) -> None:
        """The engine's latest lines: those not shown yet are added (all of them again when nothing of
        what is shown is in them), and the view follows them unless the user scrolled up."""
        new = lines_after(self.tail, lines)
        self.writing = True
        try:
            if new is None:
                self.clear()
                new = lines
            self.write_lines(new, scroll_end=False)
        finally:
            self.writing = False
        self.tail = list(lines)
        if self.follow:
            self.to_end()

    def to_end(self) -> None:
        """At the newest line, once the layout knows the log's size (it may have just been shown)."""

        def scroll() -> None:
            self.writing = True
            try:
                self.scroll_end(animate=False, immediate=True, x_axis=False)
            finally:
                self.writing = False

        self.call_after_refresh(scroll)


def lines_after(shown: list[str], lines: list[str]) -> list[str] | None:
    """The lines of `lines` that come after what `shown` ends with; None when `lines` does not continue
    `shown` (the log was rotated, another engine answers): show them all anew."""
    if not shown:
        return None
    for start in range(len(lines)):  # the longest overlap first: `lines` may repeat a line
        overlap = len(lines) - start
        if overlap <= len(shown) and shown[-overlap:] == lines[:overlap]:
            return lines[overlap:]
    # no line in common: the tail may have moved on by more than it holds
    return None


class EngineView(View):
    FOCUS = "#engine-log"
    BINDINGS = bindings("engine")

    def compose(self) -> ComposeResult:
        yield Static("not connected", id="engine-status")
        yield Label("log", classes="section")
        yield TailLog(id="engine-log", max_lines=LOG_LINES)

    def on_mount(self) -> None:
        self.set_interval(2.0, self.refresh_if_visible)

    def shown(self) -> None:
        log = self.query_one(TailLog)
        if log.follow:
            log.to_end()
        self.run_worker(self.action_refresh(), exclusive=True, group="engine-view")

    def on_engine_connected(self, message: EngineConnected) -> None:
        self.run_worker(self.action_refresh(), exclusive=True, group="engine-view")

    def on_engine_lost(self, message: EngineLost) -> None:
        text = f"engine {message.state}" + (f": {message.message}" if message.message else "")
        if message.state in ("absent", "stopped"):
            text += f"\n{key_of('engine', 'restart')} starts one"
        self.query_one("#engine-status", Static).update(text)

    def on_models_released(self, message: ModelsReleased) -> None:
        self.run_worker(self.action_refresh(), exclusive=True, group="engine-view")

    async def refresh_if_visible(self) -> None:
        if (
            getattr(self.app.query_one("#tabs"), "active", None) == "engine"
            and self.engine_app.link.connected
        ):
            await self.action_refresh()

    async def action_refresh(self) -> None:
        from engine.protocol import LogTail, Status

        status = await self.call(Status())
        if status is None:
            return
        memory, total = status.memory_used_bytes, status.memory_total_bytes
        running = [worker.job_id for worker in status.workers if worker.job_id] or [status.running or ""]
        running = [job_id for job_id in running if job_id]
        lines = [
            f"model {status.model}   engine {status.engine_version}   pid {status.pid}   "
            f"up {duration_text(status.uptime_s)}",
            f"device {status.device}   memory {memory / 2**30 if memory else 0:.2f} GiB"
            + (f" of {total / 2**30:.1f} GiB" if total else ""),
            f"models loaded: {', '.join(status.models_loaded) or 'none'}",
            *[worker_line(worker) for worker in status.workers],
            *([lane_line(status.llm_lane)] if status.llm_lane is not None else []),
            f"running: {', '.join(running) or 'nothing'}   queued: {len(status.queue)}"
            + ("   downloading weights" if status.downloading else ""),
            *(
                [f"started with: {shlex.join(status.options)} ({key_of('engine', 'restart')} keeps them)"]
                if status.options
                else []
            ),
        ]
        self.query_one("#engine-status", Static).update("\n".join(lines))
        tail = await self.call(LogTail(lines=LOG_LINES))
        if tail is not None:
            self.query_one(TailLog).show_tail(tail.lines)

    async def action_release(self) -> None:
        from engine.protocol import ReleaseModels

        if await self.call(ReleaseModels()) is not None:
            self.notify("models released from memory; the next job loads them again")

    def action_stop(self) -> None:
        if not self.engine_app.link.connected:
            self.notify(
                f"no engine is connected; {key_of('engine', 'restart')} starts one", severity="warning"
            )
            return

        from engine.protocol import Shutdown

        async def answered(yes: bool | None) -> None:
            if yes and await self.call(Shutdown()) is not None:
                self.notify(
                    "the engine is stopping (a running job is marked interrupted); "
                    f"{key_of('engine', 'restart')} starts it again"
                )

        self.app.push_screen(Confirm(f"Stop the engine?{self.job_warning()}", "Stop"), answered)

    def action_restart(self) -> None:
        """Restart the engine when one is connected (asks first), else start one."""
        if not self.engine_app.link.connected:
            self.app.run_worker(self.engine_app.restart_engine(), group="engine-start")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.run_worker(self.engine_app.restart_engine(), group="engine-start")

        self.app.push_screen(Confirm(f"Restart the engine?{self.job_warning()}", "Restart"), answered)

    def job_warning(self) -> str:
        from .queue import QueueView

        running = self.app.query_one(QueueView).running_jobs
        if len(running) > 1:
            return f" The {len(running)} running jobs are marked interrupted."
        return f" The running job {running[0].id[:8]} is marked interrupted." if running else ""


def lane_line(lane: LaneState) -> str:
    """The LLM lane: "LLM lane cuda:2 making 3f2a9c1b, 1 ahead, models stage1"."""
    return f"{lane_summary(lane)}, models {', '.join(lane.models_loaded) or 'none'}"


def worker_line(worker: WorkerState) -> str:
    """A worker and what it does: "worker cuda:1: running 3f2a9c1b, models stage1, stage2"."""
    doing = f"running {worker.job_id[:8]}" if worker.job_id else worker.state
    return f"worker {worker.label}: {doing}, models {', '.join(worker.models_loaded) or 'none'}"
