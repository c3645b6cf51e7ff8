"""`landiff-engine queue [pause|resume]` and `landiff-engine move JOB --to PLACE`: the queue's order and
its pause.

The engine is the store's only writer, so a move, a pause or a resume goes through it (one is started when
none runs, as for `delete`: the request reaches it before its workers have loaded torch to take a job).
The queue alone is read from the job history when no engine runs, as the other reading commands do.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.protocol import JobSummary

PLACE_WORDS = ("top", "bottom", "up", "down")
MOST_SHOWN = 500  # queued jobs listed (the engine's status lists as many)


def place(text: str) -> int | str:
    """--to as the wire's MoveJob.to: place 1 (next) is 0; a word as it is."""
    if text in PLACE_WORDS:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text) - 1
    raise argparse.ArgumentTypeError(
        f"{text!r}: give a place from 1 (next), or one of {', '.join(PLACE_WORDS)}"
    )


def run_queue(args: argparse.Namespace) -> int:
    from engine.cli.client_commands import engine_for, history_without_engine, reading_engine
    from engine.protocol import ListJobs, PauseQueue, Status

    listing = ListJobs(status="queued", sort="queue", limit=MOST_SHOWN)
    if args.action is not None:
        with engine_for(args) as client:
            paused = client.call(PauseQueue(paused=args.action == "pause")).paused
            jobs = client.call(listing).jobs
    elif (running := reading_engine(args)) is not None:
        with running:
            paused = running.call(Status()).queue_paused
            jobs = running.call(listing).jobs
    else:
        history = history_without_engine("queue")
        paused, jobs = False, []
        if history is not None:
            with history:
                paused, jobs = (
                    history.queue_paused(),
                    history.list_jobs(None, "queued", "queue", 0, MOST_SHOWN).jobs,
                )
    show_queue(jobs, paused, args.json)
    return 0


def run_move(args: argparse.Namespace) -> int:
    from engine.cli.client_commands import engine_for
    from engine.protocol import ListJobs, MoveJob

    request = MoveJob(job_id=args.job, to=args.to)  # built first: a refused id starts nothing
    with engine_for(args) as client:
        moved = client.call(request)
        jobs = client.call(ListJobs(status="queued", sort="queue", limit=MOST_SHOWN)).jobs
    show_queue(jobs, moved.paused, args.json)
    return 0


def show_queue(jobs: list[JobSummary], paused: bool, as_json: bool) -> None:
    """The queued jobs in the order they will run, and whether the queue is paused."""
    if as_json:
        print(json.dumps({"paused": paused, "queue": [job.id for job in jobs]}, indent=2))
        return
    state = "paused: no job starts until `landiff-engine queue resume`" if paused else "running"
    print(f"queue {state}; {len(jobs)} job(s) waiting")
    for number, job in enumerate(jobs, start=1):
        print(f"{number:>4}  {job.id}  {job.prompt[:70]}")


def add_queue_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], int]]:
    from engine.cli.client_commands import add_engine_options, add_reading_engine_options

    queue = commands.add_parser(
        "queue",
        help="the queued jobs in the order they run; `queue pause` stops new jobs starting (the running "
        "one finishes; it stays paused across engine restarts), `queue resume` starts them again",
    )
    queue.add_argument("action", nargs="?", choices=("pause", "resume"), help="pause or resume the queue")
    queue.add_argument("--json", action="store_true", help="paused or not, and the queued ids in order")
    add_reading_engine_options(queue)

    move = commands.add_parser("move", help="move a queued job to another place in the queue")
    move.add_argument("job", help="job id, or its first 4+ characters")
    move.add_argument(
        "--to",
        type=place,
        required=True,
        metavar="PLACE",
        help="1 runs next, 2 after it...; or top, bottom, up (one place earlier), down (one later)",
    )
    move.add_argument("--json", action="store_true", help="paused or not, and the queued ids in order")
    add_engine_options(move)
    return {"queue": run_queue, "move": run_move}
