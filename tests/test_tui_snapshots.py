"""Snapshots of every screen at 80x24 and 120x40, fed fixed data by a scripted link."""

from __future__ import annotations

import time

import pytest

from engine import protocol as p
from landiff_tui.app import LanDiffApp

from .tui_double import ScriptedLink, job

SIZES = [(80, 24), (120, 40)]


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def make_app(**link_options) -> LanDiffApp:
    jobs = (
        [job(0, "running"), job(1, "queued")]
        + [job(i) for i in range(2, 9)]
        + [job(9, "failed", error="out of memory")]
    )
    return LanDiffApp(link=ScriptedLink(jobs, **link_options))


async def settle(pilot) -> None:
    """Until the lazy tabs, the form's defaults and every request are done, however slow the machine."""
    app = pilot.app
    for _ in range(200):
        await pilot.pause(0.05)
        await app.workers.wait_for_complete()
        views = len(app.query("View"))
        if views == 5 and app.query_one("#param-cfg").value and not app.workers._workers:
            break
    for widget in app.query("TextArea, Input"):  # a blinking cursor would make the picture depend on timing
        widget.cursor_blink = False
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)
    # focus may arrive after the blink stopped, and a widget focused then keeps the cursor the blink last
    # left: drawn exactly where the focus is, whatever the timing (Textual's own pause, pinned 8.2.8)
    for widget in app.query("TextArea, Input"):
        widget._pause_blink(visible=widget.has_focus)
        # a TextArea keys its line cache on the cursor only while it blinks: a line drawn while the cursor
        # was blinked off would be reused as it is, cursor and all gone (Textual 8.2.8's render_line)
        if hasattr(widget, "_line_cache"):
            widget._line_cache.clear()
        widget.refresh()
    await pilot.pause(0.05)


def show(tab: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press(tab)
        await settle(pilot)
        if tab == "f2":
            queue = pilot.app.query_one("QueueView")
            queue.memory = await pilot.app.link.call(p.Status())  # what its timer asks every few seconds
            for stage, step, total in (("text", 2, 2), ("tokens", 17, 17), ("denoise", 20, 50)):
                pilot.app.link.publish(
                    "job_progress",
                    job_id=job(0).id,
                    stage=stage,
                    step=step,
                    total=total,
                    chunk=2,
                    chunks=3,
                    rate=4.0,
                    eta_s=7.5,
                    frames_written=41,
                    video_seconds=6.1,
                    job_eta_s=95.0,
                )
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("tab", ["f1", "f2", "f3", "f4", "f5"])
def test_screens(snap_compare, tab, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=show(tab))


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_job_detail_and_first_run_dialog(snap_compare, size):
    async def detail(pilot) -> None:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        await pilot.press("down", "down", "enter")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=detail)
    assert snap_compare(make_app(weights_complete=False), terminal_size=size, run_before=settle)
