"""`serve --on-finish COMMAND`: a command the engine runs each time a job ends (finished, failed, cancelled
or interrupted), with the job's record as JSON on its stdin: a desktop notification, a webhook (`curl
--data-binary @-`), a copy to another disk. Off unless asked for.

The command is split as a shell would split it (shlex) but run without a shell; `sh -c '...'` gives one.
It runs in a thread of its own, one job's end at a time and in order, so a slow one delays only the next
hook, never a job; it gets HOOK_TIMEOUT_S, and what it says and how it ended go to the engine's log.
Its stdin: {"event": the job's last event, "job": the job's summary, as `show --json` prints it}.
"""

from __future__ import annotations

import json
import logging
import queue
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence

from engine.daemon.store import Store
from engine.protocol import Event, JobEvent, JobFailedEvent, JobFinishedEvent, JobStoppedEvent

log = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 120.0
MOST_WAITING = 1000  # job ends waiting for the hook; more are logged and skipped, not held in memory
SAID_CHARS = 2000  # of what the hook wrote, kept in the log
ENDS = (JobFinishedEvent, JobFailedEvent, JobStoppedEvent)  # stopped: cancelled (partly kept) or interrupted


class BadHook(ValueError):
    """The --on-finish command cannot run; the message says why, for serve's one line."""


def hook_command(text: str) -> tuple[str, ...]:
    """--on-finish as the words it runs, refused now if it cannot run at all."""
    try:
        words = tuple(shlex.split(text))
    except ValueError as error:
        raise BadHook(f"--on-finish {text!r}: {error} (quote it as a shell would)") from None
    if not words:
        raise BadHook("--on-finish needs a command, e.g. --on-finish 'notify-send LanDiff'")
    if shutil.which(words[0]) is None:
        raise BadHook(f"--on-finish: {words[0]!r} is not a program on PATH (give its full path)")
    return words


class OnFinish(threading.Thread):
    """Runs the hook for each job end the hub publishes (`notice` is its listener: it only queues)."""

    def __init__(self, command: Sequence[str], store: Store):
        super().__init__(name="landiff-on-finish", daemon=True)
        self.command, self.store = list(command), store
        self.ends: queue.Queue[JobEvent | None] = queue.Queue(MOST_WAITING)

    def notice(self, event: Event) -> None:
        if isinstance(event, ENDS):
            try:
                self.ends.put_nowait(event)
            except queue.Full:
                log.warning("--on-finish is %d job ends behind: skipped job %s's", MOST_WAITING, event.job_id)

    def stop(self) -> None:
        self.ends.put(None)  # after the ends already queued: each gets its hook, within the engine's wait

    def run(self) -> None:
        while (event := self.ends.get()) is not None:
            try:
                self.run_hook(event)
            except Exception:  # the hook's failure is logged; the thread stays for the next job
                log.exception("--on-finish for job %s", event.job_id)

    def run_hook(self, event: JobEvent) -> None:
        row = self.store.get(event.job_id)
        if row is None:  # deleted before its hook ran
            return
        job = row.to_summary()
        record = {"event": event.model_dump(mode="json"), "job": job.model_dump(mode="json")}
        try:
            done = subprocess.run(
                self.command,
                input=json.dumps(record).encode(),
                capture_output=True,
                timeout=HOOK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            log.warning("--on-finish for job %s killed after %.0f s", job.id, HOOK_TIMEOUT_S)
            return
        except OSError as error:
            log.warning("--on-finish for job %s could not run: %s", job.id, error)
            return
        said = (done.stdout + done.stderr).decode(errors="replace").strip()[:SAID_CHARS]
        if done.returncode:
            log.warning("--on-finish for job %s exited %d: %s", job.id, done.returncode, said)
        else:
            log.info("--on-finish for job %s (%s) ran%s", job.id, job.status, f": {said}" if said else "")
