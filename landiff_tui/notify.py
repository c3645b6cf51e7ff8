"""A job's end told on the desktop, through the terminal (engine/notify.py picks the escape: kitty's OSC 99,
OSC 9, OSC 777, else the bell), besides the app's own toast, so that a job finishing while the user is in
another window, or on another machine's terminal over SSH, reaches them.

Only for jobs this app has seen queued or running (not one that ended before it connected), and only when
one finishes or fails: a cancel is the user's own doing, an interruption the engine stopping, which the app
says itself. `landiff-tui --no-notify` turns it off.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from engine.notify import BEL, notification

if TYPE_CHECKING:
    from textual.app import App

    from engine import protocol

    from .messages import JobEndedEvent


class JobEndNotices:
    """The jobs seen alive (id -> prompt) and the notification each one's end gets."""

    def __init__(self) -> None:
        self.prompts: dict[str, str] = {}

    def saw(self, job_id: str, prompt: str) -> None:
        self.prompts[job_id] = prompt

    def saw_active(self, jobs: list[protocol.JobSummary]) -> None:
        for job in jobs:
            self.saw(job.id, job.prompt)

    def ended(self, event: JobEndedEvent) -> tuple[str, str] | None:
        """The (title, body) to notify for this end; None for a job not seen alive, or a cancel or an
        interruption."""
        from engine.protocol import JobFailedEvent, JobFinishedEvent

        prompt = self.prompts.pop(event.job_id, None)
        if prompt is None:
            return None
        if isinstance(event, JobFinishedEvent):
            return "LanDiff: video ready", prompt
        if isinstance(event, JobFailedEvent):
            return "LanDiff: job failed", f"{event.error} ({prompt})"
        return None


def notify_desktop(app: App, title: str, body: str) -> None:
    """Send the notification for the terminal the app runs in (the bell through Textual's own call)."""
    sequence = notification(os.environ, title, body)
    if sequence == BEL:
        app.bell()
    else:
        write_to_terminal(app, sequence)


def write_to_terminal(app: App, text: str) -> None:
    """Write an escape sequence to the app's terminal, between its frames.

    Textual offers no public call for it: its own `App.bell` and `App.copy_to_clipboard` (OSC 52) write
    through the app's driver, which is private (`App._driver`); this is the one place here that reaches it.
    Nothing in a headless app (tests) or before the driver starts."""
    driver = app._driver
    if driver is None or app.is_headless:
        return
    driver.write(text)
