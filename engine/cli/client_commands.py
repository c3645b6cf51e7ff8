"""The command-line verbs that talk to the engine: submit, rerun, jobs, show, cancel, delete, status, presets,
stop.

Those that change something (submit, rerun, cancel, delete, presets --save/--delete) start an engine in
the background when none answers, as the TUI does. Those that only read (status, jobs, show, presets) start
none: with no engine running they say so and answer from the job history on disk (engine/cli/history.py),
unless `--model` names the engine to use, which is then started as for a change. `--model` names the model
an engine must serve; without it they use whichever engine runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from engine.cli.output import OutputConsole
from engine.cli.param_options import add_param_options, add_prompt_argument, given_params
from engine.client import (
    DEFAULT_MODEL,
    EngineClient,
    EngineError,
    EngineUnavailable,
    connect,
    running_engine,
    start_engine,
)
from engine.durations import duration_text
from engine.params import check_params, fps_text
from engine.paths import lock_holder, lock_path, log_path
from engine.wire import LEAVES_WITHIN_S

if TYPE_CHECKING:
    from engine.cli.history import History
    from engine.protocol import (
        JobList,
        JobSummary,
        LaneState,
        ListJobs,
        Preset,
        PresetList,
        StatusReply,
        WorkerState,
    )

EXIT_FAILED = 1
PAUSED = "; paused: none starts until `landiff-engine queue resume`"


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Options left unset fall back to the preset, then to the engine's defaults."""
    add_param_options(parser)
    parser.add_argument(
        "--preset", default=None, help="start from a saved preset (see `landiff-engine presets`)"
    )
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_notify_option(parser)


def add_variation_options(parser: argparse.ArgumentParser) -> None:
    from engine.variations import MAX_VARIATIONS

    parser.add_argument(
        "--seeds",
        default=None,
        metavar="SEEDS",
        help="queue one job per seed, as one group: a range (1-4), a list (3,7,11), both (1-3,10) or a "
        f"count of random seeds (4x); at most {MAX_VARIATIONS}",
    )
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="NAME=V1,V2",
        help="queue one job per value of one job parameter, as one group (e.g. cfg=5,7.5,10; an empty value "
        "is unset where the parameter may be); with --seeds every seed with every value, at most "
        f"{MAX_VARIATIONS} jobs",
    )


def add_notify_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-notify",
        dest="notify",
        action="store_false",
        help="when the job ends, send no desktop notification through the terminal (sent by default when "
        "the output is a terminal; see README)",
    )


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="the model the engine must serve: refused if a running engine serves another (default: the "
        f"running engine's; {DEFAULT_MODEL} when one must be started)",
    )
    parser.add_argument("--ckpts", default=None, help="weights root for an engine started here")


def add_reading_engine_options(parser: argparse.ArgumentParser) -> None:
    """A command that only reads starts no engine, unless --model names one."""
    parser.add_argument(
        "--model",
        default=None,
        help="the model the engine must serve: refused if a running engine serves another; given, an "
        "engine serving it is started when none runs (default: the running engine's, and none is started: "
        "without one the job history on disk answers)",
    )
    parser.add_argument("--ckpts", default=None, help="weights root for an engine started here")


def check_length(params: dict[str, Any], model: str) -> None:
    """A long video's length is checked against the model and any rounding said."""
    if params.get("frames") is None and params.get("overlap") is None:
        return
    from engine.cli.describe import describe_length
    from engine.generation.lengths import plan_length, rules_for

    plan = plan_length(rules_for(model), params.get("frames"), params.get("overlap"))  # torch-free
    if plan.rounded:
        print(f"note: {plan.note()}", file=sys.stderr)
    print(describe_length(plan), file=sys.stderr)


def job_params(
    client: EngineClient, base: dict[str, Any], given: dict[str, Any], args: argparse.Namespace, model: str
) -> dict[str, Any]:
    """The earlier job's (or just the prompt), then the preset's, then the given parameters, checked."""
    from engine.protocol import ListPresets

    params = dict(base)
    if args.preset is not None:
        presets = client.call(ListPresets()).presets
        if args.preset not in presets:
            raise ValueError(f"no preset named {args.preset!r}; known: {', '.join(sorted(presets))}")
        params.update(presets[args.preset].params)
    params = check_params({**params, **given}, complete=False)
    check_length(params, model)
    return params


def engine_for(args: argparse.Namespace, model: str | None = None) -> EngineClient:
    """The engine serving `model` (default: --model's; None: whichever runs), started if none runs."""
    from pathlib import Path

    ckpts = getattr(args, "ckpts", None)
    return start_engine(model or getattr(args, "model", None), Path(ckpts) if ckpts else None)


def reading_engine(args: argparse.Namespace) -> EngineClient | None:
    """The engine for a command that only reads: the running one, or None (none is started for a look);
    with --model, that model's engine, started if none runs (the user named it)."""
    if args.model is not None:
        return engine_for(args)
    return running_engine()


def history_without_engine(command: str) -> History | None:
    """With no engine running: the job history read-only (None: there is none yet), after one line on
    stderr saying so and how to start an engine."""
    from engine.cli.history import no_engine_note, open_history

    history = open_history()
    print(no_engine_note(command, history), file=sys.stderr)
    return history


def served_model(client: EngineClient) -> str:
    from engine.protocol import Status

    return client.call(Status()).model


def run_submit(args: argparse.Namespace) -> int:
    # checked before any engine starts (the length in seconds against the model that would be started)
    given = check_params(
        {"prompt": args.prompt, **given_params(args, args.model or DEFAULT_MODEL)}, complete=False
    )
    changes = submit_variations(args, given)
    running = running_engine(args.model)
    with running or engine_for(args) as client:
        model = served_model(client)
        given = check_params({"prompt": args.prompt, **given_params(args, model)}, complete=False)
        params = job_params(client, {}, given, args, model)
        try:
            if changes == [{}]:
                return submit_and_report(client, params, args.wait, args.notify)
            return submit_group(client, params, changes, model, args.wait, args.notify)
        except EngineError as error:
            if error.code == "no_weights" and running is None:
                stop_started_engine(client)
            raise


def submit_variations(args: argparse.Namespace, given: dict[str, Any]) -> list[dict[str, Any]]:
    """What each job of `--seeds`/`--sweep` changes ([{}]: one job), checked before any engine starts; an
    option the variations set as well is refused, not silently overridden."""
    from engine.variations import parse_seeds, parse_sweep, variations

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    sweep = parse_sweep(args.sweep) if args.sweep is not None else None
    if seeds is not None and "seed" in given:
        raise ValueError("give the seed either as --seed or as --seeds, not both")
    if sweep is not None and sweep.name in given:
        flag = "--" + sweep.name.replace("_", "-")
        raise ValueError(f"give {sweep.name} either as {flag} or in --sweep, not both")
    return variations(seeds, sweep)


def submit_group(
    client: EngineClient,
    params: dict[str, Any],
    changes: list[dict[str, Any]],
    model: str,
    wait: bool,
    notify: bool = True,
) -> int:
    """Queue one job per variation, all sharing a new group id: every job's parameters checked (as the
    engine checks them) before the first is sent, so a refused one queues nothing. One line per job on
    stdout (its id, then what it changes), the group on stderr; `wait`: each followed until it ends."""
    from engine.protocol import Submit, Subscribe
    from engine.variations import changed_words, new_group_id

    group = new_group_id()
    requests = []
    for change in changes:
        try:
            checked = check_params({**params, **change}, complete=False)
            if {"frames", "overlap"} & set(change):
                check_length(checked, model)
            requests.append(Submit.model_validate({"params": checked, "group": group}))
        except ValueError as error:  # pydantic's ValidationError is one
            raise ValueError(f"{changed_words(change)}: {error} (nothing was queued)") from None
    if wait:
        client.call(Subscribe(since=0))
    job_ids = []
    for change, request in zip(changes, requests, strict=True):
        job_id = client.call(request).job_id
        job_ids.append(job_id)
        print(f"{job_id} {changed_words(change)}", flush=True)
    print(f"group {group}: {len(job_ids)} job(s) queued", file=sys.stderr, flush=True)
    if not wait:
        return 0
    ends = [wait_for_job(client, job_id, f"{n}/{len(job_ids)}") for n, job_id in enumerate(job_ids, 1)]
    finished = sum(end.status == "finished" for end in ends)
    if notify:
        from engine.cli.output import notify_terminal

        notify_terminal("LanDiff: variations ended", f"group {group}: {finished} of {len(ends)} finished")
    return 0 if finished == len(ends) else EXIT_FAILED


def wait_for_job(client: EngineClient, job_id: str, place: str) -> JobEnd:
    """`follow` for one job of a group on a subscribed connection: the events of a later job that ended
    while an earlier one was followed were passed over, so its row says how it ended."""
    from engine.protocol import GetJob

    print(f"job {job_id} ({place})", file=sys.stderr, flush=True)
    job = client.call(GetJob(job_id=job_id)).job
    if job.status in ("queued", "running"):
        return follow(client, job_id)
    said = f"finished: {job.video_path}" if job.status == "finished" else f"{job.status}: {job.error or ''}"
    said = said.rstrip(": ")
    print(said, file=sys.stderr, flush=True)
    return JobEnd(0 if job.status == "finished" else EXIT_FAILED, job.status, said)


def stop_started_engine(client: EngineClient) -> None:
    """Stop the engine this command started for a job it refused (its model has no weights here), so the
    way out it names (`--model tiny`) is not refused next by an engine serving the other model."""
    from engine.protocol import Shutdown

    with contextlib.suppress(EngineError, EngineUnavailable):  # it may have been stopped meanwhile
        client.call(Shutdown())


def run_rerun(args: argparse.Namespace) -> int:
    def given_for(model: str) -> dict[str, Any]:
        given = given_params(args, model)
        if args.prompt is not None:
            given["prompt"] = args.prompt
        return check_params(given, complete=False)

    from engine.protocol import GetJob

    given_for(args.model or DEFAULT_MODEL)
    request = GetJob(job_id=args.job)  # built first: a refused id starts no engine
    client, started = rerun_engine(args)
    with client:
        job = client.call(request).job
        serving = served_model(client)
        if job.model != serving and args.model is None:  # its job's model, which this engine cannot serve
            raise ValueError(
                f"job {job.id} ran on the {job.model!r} model and this engine serves {serving!r}: "
                f"stop it (`landiff-engine stop`), then `landiff-engine rerun {args.job} --model "
                f"{job.model}` starts one with {job.model!r}; or `--model {serving}` re-runs it on this one"
            )
        if job.model != serving:  # --model said so: it wins over the job's
            print(
                f"note: job {job.id} ran on the {job.model!r} model; re-running it on {serving!r}",
                file=sys.stderr,
            )
        params = job_params(client, dict(job.params), given_for(serving), args, serving)
        try:
            return submit_and_report(client, params, args.wait, args.notify)
        except EngineError as error:
            if error.code == "no_weights" and started:
                stop_started_engine(client)
            raise


def rerun_engine(args: argparse.Namespace) -> tuple[EngineClient, bool]:
    """--model's engine, used or started (one serving another model refuses, naming it); without --model
    the running engine, else one started for the job's own model (read from the history). And whether
    this command started it."""
    running = running_engine(args.model)
    if running is not None:
        return running, False
    if args.model is not None:
        return engine_for(args), True
    from engine.cli.history import open_history

    history = open_history()
    if history is None:
        raise ValueError(f"no job {args.job!r} (there is no job history yet)")
    with history:
        model = history.job(args.job).model
    return engine_for(args, model), True


def submit_and_report(client: EngineClient, params: dict[str, Any], wait: bool, notify: bool = True) -> int:
    from engine.protocol import Submit, Subscribe

    if wait:  # the events of what happens from now on (the reply holds the earlier ones)
        client.call(Subscribe(since=0))
    job_id = client.call(Submit.model_validate({"params": params})).job_id
    print(job_id, flush=True)  # a script reading the id gets it before the job ends
    if not wait:
        return 0
    end = follow(client, job_id)
    if notify:
        notify_job_end(job_id, str(params.get("prompt", "")), end)
    return end.code


@dataclass(frozen=True)
class JobEnd:
    """How a followed job ended: the exit status it gives (0 finished, 1 otherwise), its status as the
    history names it, and the line said about it."""

    code: int
    status: str
    said: str


def notify_job_end(job_id: str, prompt: str, end: JobEnd) -> None:
    """The desktop notification of a job that ended while the command waited (engine/notify.py)."""
    from engine.cli.output import notify_terminal

    title = f"LanDiff: job {end.status.replace('_', ' ')}"
    detail = prompt if end.status == "finished" or not end.said else end.said
    notify_terminal(title, f"{job_id[:8]} {detail}")


def follow(client: EngineClient, job_id: str) -> JobEnd:
    """The job's progress on stderr until it ends (the client subscribed before it could); how it ended."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from engine import protocol as p
    from engine.job_words import progress_words, resumed_words

    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console) as progress:
        for event in client.event_models():
            if not isinstance(event, p.JobEvent) or event.job_id != job_id:
                continue
            if isinstance(event, p.JobProgressEvent):
                name = progress_words(event).name
                if event.stage not in tasks:
                    tasks[event.stage] = progress.add_task(name, total=event.total)
                progress.update(tasks[event.stage], completed=event.step, total=event.total, description=name)
            elif isinstance(event, p.JobStartedEvent) and (resumed := resumed_words(event)):
                console.print(resumed)
            elif isinstance(event, p.ChunkFinishedEvent):
                written = f"{event.video_seconds:.1f} s of video"
                console.print(f"chunk {event.index + 1}/{event.chunks} written: {written}")
            elif isinstance(event, p.JobFinishedEvent):
                progress.stop()
                made = event.video_frames
                rate = f" ({made} frames at {event.fps} fps)" if made else ""
                said = f"finished: {event.video}{rate}"
                console.print(said)
                return JobEnd(0, "finished", said)
            elif isinstance(event, p.JobStoppedEvent | p.JobFailedEvent):
                progress.stop()
                status = event.event.removeprefix("job_")
                if isinstance(event, p.JobStoppedEvent) and event.partial:
                    said = (
                        f"{event.status}: kept the {event.chunks_done} finished chunk(s) of "
                        f"{event.chunks}, {event.frames} frames: {event.video}"
                    )
                    console.print(said)
                    return JobEnd(EXIT_FAILED, event.status or status, said)
                error = event.error if isinstance(event, p.JobFailedEvent | p.JobInterruptedEvent) else None
                said = f"{status}: {error or ''}".rstrip(": ")
                console.print(said)
                return JobEnd(EXIT_FAILED, status, said)
    return JobEnd(EXIT_FAILED, "lost", "the engine's events stopped")


def run_jobs(args: argparse.Namespace) -> int:
    from engine.protocol import ListJobs

    # from a dict: --status is any text until the model checks it; a refused request starts no engine
    request = ListJobs.model_validate({"status": args.status, "search": args.search, "limit": args.limit})
    client = reading_engine(args)
    if client is None:
        result = jobs_from_history(request)
    else:
        with client:
            result = client.call(request)
    if args.format == "json":
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return 0
    if args.format == "tsv":
        sys.stdout.write("".join("\t".join(row) + "\n" for row in [TSV_COLUMNS, *map(tsv_row, result.jobs)]))
        return 0
    table = Table("id", "status", "created", "steps", "seed", "prompt")
    for job in result.jobs:
        table.add_row(*job_row(job))
    OutputConsole().print(table)
    print(f"{len(result.jobs)} of {result.total} job(s)")
    return 0


JOB_FORMATS = ("table", "tsv", "json")
TSV_COLUMNS = ("id", "status", "created", "model", "steps", "seed", "frames", "video_path", "prompt")
TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_row(job: JobSummary) -> tuple[str, ...]:
    """A job as `jobs --format tsv`'s line: nothing cut, an absent value empty, the time in ISO 8601 with
    its UTC offset; the prompt, the one free text, with its backslashes, tabs and line breaks escaped."""
    from datetime import datetime

    def field(value: object) -> str:
        return "" if value is None else str(value).translate(TSV_ESCAPES)

    created = datetime.fromtimestamp(job.created_at).astimezone().isoformat(timespec="seconds")
    params = job.params
    values = (job.id, job.status, created, job.model, params.get("steps"), params.get("seed"))
    return (*map(field, values), field(params.get("frames")), field(job.video_path), field(job.prompt))


def jobs_from_history(request: ListJobs) -> JobList:
    from engine.protocol import JobList

    history = history_without_engine("jobs")
    if history is None:
        return JobList(jobs=[], total=0)
    with history:
        return history.list_jobs(request.search, request.status, request.sort, request.offset, request.limit)


def job_row(job: JobSummary) -> tuple[str, str, str, str, str, str]:
    """A job as the `jobs` table's row: id, status, created, steps, seed, prompt (cut to 60 characters)."""
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
    # `params` as submitted (JobSummary keeps them as plain data)
    steps, seed = str(job.params["steps"]), str(job.params["seed"])
    return job.id, job.status, created, steps, seed, job.prompt[:60]


def run_show(args: argparse.Namespace) -> int:
    from engine.protocol import GetJob

    request = GetJob(job_id=args.job)
    client = reading_engine(args)
    waiting = None  # why a queued job waits, when an engine runs to say
    if client is None:
        from engine.cli.history import no_engine_note, open_history

        history = open_history()
        if history is None:
            raise ValueError(
                f"no job {request.job_id!r}: no engine is running and there is no job history yet"
            )
        print(no_engine_note("show", history), file=sys.stderr)
        with history:
            job = history.job(request.job_id)
    else:
        from engine.job_words import waiting_words
        from engine.protocol import Status

        with client:
            job = client.call(request).job
            if job.status == "queued":
                waiting = waiting_words(client.call(Status()), job.id)
    if args.json:
        print(json.dumps(job.model_dump(mode="json"), indent=2))
        return 0
    for label, text in [*([("waiting", waiting)] if waiting else []), *describe_job(job)]:
        print(f"{label:>12}: {text}")
    return 0


def describe_job(job: JobSummary) -> list[tuple[str, str]]:
    """A job as (label, text) lines: what is known of it, its parameters and timings, its quality."""
    from engine.job_words import quality_lines, resumed_words

    known = {
        "id": job.id,
        "status": job.status,
        "prompt": job.prompt,
        "model": job.model,
        "group": job.group,
        "worker": job.worker,
        "video_path": job.video_path,
        "tokens_path": job.tokens_path,
        "error": job.error,
    }
    lines = [(label, text) for label, text in known.items() if text is not None]
    if resumed := resumed_words(job):
        lines.append(("resumed", resumed))
    lines += [("fps", fps_text(job.params, job.model)), ("params", json.dumps(job.params))]
    if job.timings:
        lines.append(("timings", ", ".join(f"{k} {v:.1f}s" for k, v in job.timings.items())))
    if job.video_path:
        lines += quality_lines(job.quality)
    return lines


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel a job on the running engine. None is started for it (with --model, as for the reading
    commands: the user named one) unless the history holds the job queued: with no engine no job runs,
    and a queued one would run when the next engine starts, so one is started to cancel it."""
    from engine.protocol import Cancel

    request = Cancel(job_id=args.job)  # built first: a refused id starts nothing
    client = reading_engine(args)
    if client is None:
        queued, said = job_without_engine(args.job)
        if not queued:
            print(
                f"landiff-engine cancel: no engine is running, so no job is running: {said}", file=sys.stderr
            )
            return EXIT_FAILED
        print(f"{said}: starting an engine to cancel it", file=sys.stderr)
        client = engine_for(args)
    with client:
        result = client.call(request)
    print(f"{result.job_id}: {result.status}")
    return 0


def job_without_engine(given: str) -> tuple[bool, str]:
    """With no engine running: whether the history holds the job `given` queued, and what it holds of it."""
    from engine.cli.history import HistoryUnreadable, open_history

    try:
        history = open_history()
        if history is None:
            return False, f"no job {given!r} (no job history yet)"
        with history:
            job = history.job(given)
    except (HistoryUnreadable, ValueError) as error:
        return False, str(error)
    return job.status == "queued", f"job {job.id} is {job.status}"


def run_status(args: argparse.Namespace) -> int:
    from engine.protocol import Status

    client = reading_engine(args)
    if client is None:
        return status_without_engine(args.json)
    with client:
        status = client.call(Status())
    if args.json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
        return 0
    for label, text in describe_status(status):
        print(f"{label:>10}: {text}")
    return 0


def status_without_engine(as_json: bool) -> int:
    """No engine runs: said (with --json, on stderr only: there is no status to give), with what the
    history holds; status 1, so that `landiff-engine status && ...` asks whether one runs."""
    from engine.cli.history import START_HINT, HistoryUnreadable, open_history
    from engine.paths import data_dir

    if as_json:
        print(f"landiff-engine status: no engine is running; {START_HINT}", file=sys.stderr)
        return EXIT_FAILED
    try:
        history = open_history()
        held = "none yet"
        if history is not None:
            with history:
                total, queued = history.list_jobs(None, None, limit=1).total, history.queued()
            held = f"{total} job(s)" + (
                f", {queued} queued: they run when an engine starts" if queued else ""
            )
    except HistoryUnreadable as error:
        held = str(error)
    for label, text in [
        ("engine", f"not running; {START_HINT}"),
        ("history", held),
        ("data dir", str(data_dir())),
    ]:
        print(f"{label:>10}: {text}")
    return EXIT_FAILED


def describe_status(status: StatusReply) -> list[tuple[str, str]]:
    """The status reply as a few readable lines (`--json` gives every field)."""
    used, total = status.memory_used_bytes, status.memory_total_bytes
    memory = "-" if used is None else f"{used / 2**30:.1f} GiB"
    if used is not None and total:
        memory += f" of {total / 2**30:.1f} GiB"
    queue = status.queue
    waiting = f"{len(queue)} job(s)" + (": " + ", ".join(queue[:5]) if queue else "")
    loaded = ", ".join(status.models_loaded) or "none (they load with the next job)"
    workers = status.workers
    running = [worker.job_id for worker in workers if worker.job_id]
    if not running and status.running:
        running = [status.running]
    return [
        ("engine", f"{status.engine_version}, pid {status.pid}, up {duration_text(status.uptime_s)}"),
        ("model", status.model),
        ("device", f"{status.device}, memory {memory}"),
        ("loaded", loaded),
        ("workers", f"{len(workers)}" if workers else "none (every one was lost; jobs wait for one)"),
        *[(worker.label, describe_worker(worker)) for worker in workers],
        *([("LLM lane", describe_lane(status.llm_lane))] if status.llm_lane else []),
        ("running", ", ".join(running) or "nothing"),
        ("queue", waiting + (" ..." if len(queue) > 5 else "") + (PAUSED if status.queue_paused else "")),
        ("weights", "downloading" if status.downloading else "idle"),
        ("options", shlex.join(status.options) or "none (serve's defaults)"),
    ]


def describe_worker(worker: WorkerState) -> str:
    """What a worker does, as "running 3f2a9c1b0d4e, models stage1, stage2" or "idle, no models loaded"."""
    doing = f"running {worker.job_id}" if worker.job_id else worker.state
    models = ", ".join(worker.models_loaded)
    used, total = worker.memory_used_bytes, worker.memory_total_bytes
    memory = f", memory {used / 2**30:.1f} of {total / 2**30:.1f} GiB" if used is not None and total else ""
    return f"{doing}, " + (f"models {models}" if models else "no models loaded") + memory


def describe_lane(lane: LaneState) -> str:
    """The LLM lane, as "cuda:2, making 3f2a9c1b0d4e, tokens ready for 1 job(s), models stage1"."""
    doing = f"making {lane.job_id}" if lane.job_id else lane.state
    ready = f", tokens ready for {len(lane.ready)} job(s)" if lane.ready else ""
    models = ", ".join(lane.models_loaded) or "none loaded"
    return f"{lane.label}, {doing}{ready}, models {models}"


def run_presets(args: argparse.Namespace) -> int:
    from engine.protocol import DeletePreset, ListPresets, SavePreset

    if args.import_file is not None:
        return import_presets(args)
    if args.save or args.delete:  # a change: the engine makes it (started if none runs)
        with engine_for(args) as client:
            if args.save:
                client.call(SavePreset(name=args.save, params=given_params(args)))
                print(f"saved preset {args.save!r}")
            else:
                client.call(DeletePreset(name=args.delete))
                print(f"deleted preset {args.delete!r}")
        return 0
    reading = reading_engine(args)
    if reading is None:
        presets = presets_from_history().presets
    else:
        with reading:
            presets = reading.call(ListPresets()).presets
    if args.export is not None:
        return export_presets(presets, args.export, args.all)
    for name, preset in presets.items():
        kind = "built in" if preset.builtin else "saved"
        print(f"{name:<24} {kind:<9} {json.dumps(preset.params)}")
    return 0


PRESETS_FORMAT = "landiff-presets"  # a presets file's "format", with "version" 1
MOST_PRESET_FILE_BYTES = 2**20


def export_presets(presets: dict[str, Preset], to: str, everything: bool) -> int:
    """`presets --export FILE`: the saved presets (with --all the built-in ones too) as JSON, to FILE or,
    for "-", stdout; what `--import` reads."""
    chosen = {name: preset.params for name, preset in presets.items() if everything or not preset.builtin}
    text = json.dumps({"format": PRESETS_FORMAT, "version": 1, "presets": chosen}, indent=2) + "\n"
    kinds = "preset(s)" if everything else "saved preset(s)"
    if to == "-":
        sys.stdout.write(text)
        print(f"exported {len(chosen)} {kinds}", file=sys.stderr)
        return 0
    from pathlib import Path

    from engine.atomic import write_atomically

    try:
        write_atomically(Path(to), lambda partial: Path(partial).write_text(text, encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"--export {to} cannot be written: {error.strerror or error}") from None
    print(f"exported {len(chosen)} {kinds} to {to}")
    return 0


def read_presets_file(source: str) -> dict[str, dict[str, Any]]:
    """A presets file (`--export`'s; "-" is stdin) as name -> parameters, each checked as the engine checks
    a preset it saves (engine.params.check_params, no prompt); a refusal is one line naming the preset
    and the field."""
    if source == "-":
        text = sys.stdin.read(MOST_PRESET_FILE_BYTES + 1)
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read(MOST_PRESET_FILE_BYTES + 1)
        except (OSError, UnicodeDecodeError) as error:
            said = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ValueError(f"--import {source} cannot be read: {said or error}") from None
    if len(text) > MOST_PRESET_FILE_BYTES:
        raise ValueError(f"--import {source}: more than 1 MiB, not a presets file")
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"--import {source} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != PRESETS_FORMAT or data.get("version") != 1:
        raise ValueError(
            f"--import {source} is not a presets file (`landiff-engine presets --export FILE` writes one: "
            f'{{"format": "{PRESETS_FORMAT}", "version": 1, "presets": {{NAME: {{PARAMETER: VALUE}}}}}})'
        )
    found = data.get("presets")
    if not isinstance(found, dict):
        raise ValueError(f'--import {source}: its "presets" must map each name to its parameters')
    checked = {}
    for name, params in found.items():
        where = f"--import {source}: preset {name!r}"
        if not 1 <= len(name) <= 100:
            raise ValueError(f"--import {source}: a preset's name must be 1 to 100 characters, not {name!r}")
        if not isinstance(params, dict):
            raise ValueError(f'{where}: its parameters must be an object ({{"steps": 20, ...}})')
        if "prompt" in params:
            raise ValueError(f"{where}: prompt: a preset holds every job parameter but the prompt")
        try:
            checked[name] = check_params(params, complete=False)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return checked


def import_presets(args: argparse.Namespace) -> int:
    """`presets --import FILE [--replace]`: every preset of the file saved, or none. A name already saved
    with other parameters is refused unless --replace, a built-in one always; one saved the same is left."""
    from engine.protocol import ListPresets, SavePreset

    wanted = read_presets_file(args.import_file)  # checked before any engine starts
    with engine_for(args) as client:
        known = client.call(ListPresets()).presets
        same = {name for name, params in wanted.items() if name in known and known[name].params == params}
        taken = sorted(name for name in wanted if name in known and name not in same)
        builtin = [name for name in taken if known[name].builtin]
        if builtin:
            raise ValueError(
                f"--import {args.import_file}: built-in preset(s) {', '.join(map(repr, builtin))} cannot be "
                "changed; rename them in the file"
            )
        if taken and not args.replace:
            raise ValueError(
                f"--import {args.import_file}: preset(s) {', '.join(map(repr, taken))} already saved with "
                "other parameters; --replace overwrites them (nothing was imported)"
            )
        new = [name for name in wanted if name not in same]
        for name in new:
            client.call(SavePreset(name=name, params=wanted[name]))
    replaced = f", {len(taken)} of them replaced" if taken else ""
    kept = f"; {len(same)} already there the same" if same else ""
    print(f"imported {len(new)} preset(s){replaced}{kept}")
    return 0


def presets_from_history() -> PresetList:
    from engine.cli.history import builtin_presets
    from engine.protocol import PresetList

    history = history_without_engine("presets")
    if history is None:
        found = builtin_presets()
    else:
        with history:
            found = history.presets()
    return PresetList.model_validate({"presets": found})


def run_delete(args: argparse.Namespace) -> int:
    from engine.protocol import DeleteJob

    request = DeleteJob(job_id=args.job, delete_files=args.files)  # built first: a refused id starts nothing
    with engine_for(args) as client:
        deleted = client.call(request).job_id  # a queued or running job is refused: cancel it first
    print(f"deleted job {deleted}" + (" and its files" if args.files else " (its files stay)"))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    try:
        client = connect()
    except EngineUnavailable:
        print("no engine is running; nothing to stop")
        return 0
    from engine.protocol import Shutdown

    with client:
        client.call(Shutdown())
    print("engine stopping (a running job is marked interrupted)...", flush=True)
    # it has left once it lets go of the data dir's lock (its workers may first finish a torch import), so
    # a `serve` or a client started after this finds the data dir free
    deadline = time.monotonic() + LEAVES_WITHIN_S
    while (holder := lock_holder(lock_path())) is not None:
        if time.monotonic() > deadline:
            print(f"the engine (pid {holder}) has not stopped yet; see {log_path()}", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.1)
    print("engine stopped")
    return 0


def add_client_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], int]]:
    submit = commands.add_parser("submit", help="queue a job on the engine (starting it if needed)")
    add_prompt_argument(submit)
    add_job_options(submit)
    add_variation_options(submit)
    add_engine_options(submit)

    rerun = commands.add_parser("rerun", help="queue a past job again, optionally with changed options")
    rerun.add_argument("job", help="job id, or its first 4+ characters")
    add_prompt_argument(rerun, optional=True)
    add_job_options(rerun)
    add_engine_options(rerun)

    jobs = commands.add_parser("jobs", help="list jobs")
    jobs.add_argument(
        "--status",
        default=None,
        help="queued, running, finished, failed, cancelled, cancelled_partial, interrupted",
    )
    jobs.add_argument("--search", default=None, help="text the prompt contains")
    jobs.add_argument(
        "--limit", type=int, default=50, help="list at most this many, newest first (default 50)"
    )
    shape = jobs.add_mutually_exclusive_group()
    shape.add_argument(
        "--format",
        choices=JOB_FORMATS,
        default="table",
        help="table (default: for reading), tsv (a header row, then one job a line, tab-separated, nothing "
        "cut: " + ", ".join(TSV_COLUMNS) + "; tabs, newlines and backslashes in the prompt as \\t, \\n, "
        "\\\\), json (the jobs in full and their total)",
    )
    shape.add_argument(
        "--json", dest="format", action="store_const", const="json", help="the same as --format json"
    )
    add_reading_engine_options(jobs)

    show = commands.add_parser("show", help="one job in full")
    show.add_argument("job", help="job id, or its first 4+ characters")
    show.add_argument("--json", action="store_true", help="every field, as JSON")
    add_reading_engine_options(show)

    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job", help="job id, or its first 4+ characters")
    add_reading_engine_options(cancel)  # no engine runs: no job runs either (a queued one starts one)

    delete = commands.add_parser(
        "delete",
        help="delete a job from the history, asking nothing (a queued or running one is refused: cancel it)",
    )
    delete.add_argument("job", help="job id, or its first 4+ characters")
    delete.add_argument(
        "--files", action="store_true", help="also delete its folder: the video, tokens and record"
    )
    add_engine_options(delete)

    status = commands.add_parser(
        "status",
        help="the engine: device, memory, models loaded, queue (exit status 1 when none runs)",
    )
    status.add_argument("--json", action="store_true", help="every field, as JSON")
    add_reading_engine_options(status)

    presets = commands.add_parser("presets", help="list presets, or save or delete one")
    action = presets.add_mutually_exclusive_group()
    action.add_argument(
        "--save", metavar="NAME", default=None, help="save the job options given here as NAME"
    )
    action.add_argument("--delete", metavar="NAME", default=None, help="delete a saved preset")
    action.add_argument(
        "--export",
        metavar="FILE",
        default=None,
        help="write the saved presets (with --all the built-in ones too) to FILE as JSON (- : stdout)",
    )
    action.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        default=None,
        help="save the presets of FILE (--export's JSON; - : stdin), each checked as the engine checks one, "
        "all or none; a name saved already with other parameters is refused unless --replace",
    )
    presets.add_argument("--all", action="store_true", help="with --export: the built-in presets too")
    presets.add_argument("--replace", action="store_true", help="with --import: overwrite saved presets")
    add_param_options(presets, seconds=False)  # a preset is for any model: its length is in frames
    add_reading_engine_options(presets)

    commands.add_parser(
        "stop", help="stop the engine and wait until it has left (a running job is marked interrupted)"
    )
    return {
        "submit": run_submit,
        "rerun": run_rerun,
        "jobs": run_jobs,
        "show": run_show,
        "cancel": run_cancel,
        "delete": run_delete,
        "status": run_status,
        "presets": run_presets,
        "stop": run_stop,
    }
