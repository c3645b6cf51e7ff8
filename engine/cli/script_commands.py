"""`landiff-engine logs [-n N] [-f]` and `landiff-engine watch JOB`: the engine's log and one job's progress,
for scripts and a second terminal.

Neither starts an engine. `logs` reads the log file itself (engine/paths.log_path), so it works with no
engine running, and `-f` follows it across the engine's rotation (engine/daemon/logs.py) and restarts.
`watch` follows a job on the running engine as `submit --wait` does and exits with what became of it;
with no engine it says the job's state from the history.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

EXIT_FAILED = 1
EXIT_NO_ENGINE = 2  # watch: the job has not ended and no engine runs to end it
EXIT_INTERRUPTED = 130  # ctrl+c: as the other commands, and as a shell reports `tail -f` ended so
POLL_S = 0.25  # how often `logs -f` looks for more
ENDED_OK = "finished"
ACTIVE = ("queued", "running")


def run_logs(args: argparse.Namespace) -> int:
    from engine.daemon.logs import tail
    from engine.paths import log_path

    if args.lines < 0:
        raise ValueError(f"-n {args.lines}: give 0 or more lines")
    path = log_path()
    out = sys.stdout.buffer
    if not path.is_file() and not args.follow:
        print(f"landiff-engine logs: no engine log yet ({path}): no engine has run here", file=sys.stderr)
        return EXIT_FAILED
    if args.lines and path.is_file():
        out.write("".join(f"{line}\n" for line in tail(path, args.lines)).encode())
        out.flush()
    if not args.follow:
        return 0
    try:
        follow_file(path, out)
    except KeyboardInterrupt:  # the way to end -f: quietly
        return EXIT_INTERRUPTED
    return 0


def follow_file(path: Path, out: BinaryIO, keep_on: Callable[[], bool] = lambda: True) -> None:
    """What is appended to `path` from now on, written to `out` as it comes (as `tail -F`): when the file
    is rotated (renamed away, a new one made in its place) what the old one got last is written, then the
    new one from its start; a file cut short is read again from its start; one not there yet is waited
    for. Returns once `keep_on()` is false (never, for the command: ctrl+c ends it)."""
    handle = open_at_end(path)
    while keep_on():
        if handle is not None and (chunk := handle.read(1 << 16)):
            out.write(chunk)
            out.flush()
            continue
        replaced = handle is None or rotated(path, handle)
        if replaced:
            if handle is not None:  # what the old file got before it was renamed away
                while chunk := handle.read(1 << 16):
                    out.write(chunk)
                out.flush()
                handle.close()
            handle = open_from_start(path)
            if handle is not None:
                continue
        time.sleep(POLL_S)
    if handle is not None:
        handle.close()


def open_at_end(path: Path) -> BinaryIO | None:
    handle = open_from_start(path)
    if handle is not None:
        handle.seek(0, os.SEEK_END)
    return handle


def open_from_start(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def rotated(path: Path, handle: BinaryIO) -> bool:
    """Whether `path` is no longer the file `handle` reads (renamed away, removed), or was cut short (then
    `handle` is put back at its start)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # renamed, the new one not made yet: the next look finds it
    held = os.fstat(handle.fileno())
    if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
        return True
    if now.st_size < handle.tell():
        handle.seek(0)
    return False


def run_watch(args: argparse.Namespace) -> int:
    from engine.cli.client_commands import follow, notify_job_end
    from engine.client import running_engine
    from engine.protocol import GetJob, Status, Subscribe

    request = GetJob(job_id=args.job)  # built first: a refused id asks nothing
    client = running_engine()
    if client is None:
        return watch_without_engine(args.job)
    with client:
        client.call(Subscribe(since=0))  # first: an end after the look below still comes as an event
        job = client.call(request).job
        if job.status not in ACTIVE:
            return said_ended(job.id, job.status, job.error)
        from engine.job_words import waiting_words

        waiting = f": {waiting_words(client.call(Status()), job.id)}" if job.status == "queued" else ""
        print(f"job {job.id} is {job.status}{waiting}", file=sys.stderr)
        try:
            end = follow(client, job.id)
        except KeyboardInterrupt:
            print(f"stopped watching; job {job.id} goes on in the engine", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.notify:
        notify_job_end(job.id, job.prompt, end)
    return end.code


def said_ended(job_id: str, status: str, error: str | None) -> int:
    """A job that had ended before the watch began: said, and its exit status (0 finished, else 1)."""
    print(f"job {job_id} has ended: {status}" + (f": {error}" if error else ""), file=sys.stderr)
    return 0 if status == ENDED_OK else EXIT_FAILED


def watch_without_engine(given: str) -> int:
    """No engine runs: the history says what became of the job; one still queued or running (it ran when
    an engine stopped) cannot end until one starts, which this command does not do."""
    from engine.cli.history import START_HINT, open_history

    history = open_history()
    if history is None:
        raise ValueError(f"no job {given!r}: no engine is running and there is no job history yet")
    with history:
        job = history.job(given)
    if job.status not in ACTIVE:
        return said_ended(job.id, job.status, job.error)
    print(
        f"landiff-engine watch: no engine is running, so job {job.id} ({job.status} in the history) cannot "
        f"end; {START_HINT}",
        file=sys.stderr,
    )
    return EXIT_NO_ENGINE


def add_script_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], int]]:
    from engine.cli.client_commands import add_notify_option

    logs = commands.add_parser(
        "logs",
        help="the engine log's last lines, read from its file (no engine needs to run); -f follows it",
    )
    logs.add_argument(
        "-n", "--lines", type=int, default=20, metavar="N", help="show the last N lines first (default 20)"
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print what is written to it, as it comes, across the log's rotation, until ctrl+c",
    )

    watch = commands.add_parser(
        "watch",
        help="follow a job's progress until it ends; exit status 0 finished, 1 failed, cancelled or "
        "interrupted, 2 no engine runs to end it (none is started)",
    )
    watch.add_argument("job", help="job id, or its first 4+ characters")
    add_notify_option(watch)
    return {"logs": run_logs, "watch": run_watch}
