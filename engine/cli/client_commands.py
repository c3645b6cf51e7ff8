"""The command-line verbs that talk to a running engine: submit, jobs, show, cancel, rerun, status, stop."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.cli.param_options import add_param_options, add_prompt_argument, given_params
from engine.client import EngineClient, EngineUnavailable, connect, start_engine
from engine.params import check_params

EXIT_FAILED = 1


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Options left unset fall back to the preset, then to the engine's defaults."""
    add_param_options(parser)
    parser.add_argument(
        "--preset", default=None, help="start from a saved preset (see `landiff-engine presets`)"
    )
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="landiff", help="model the engine serves if one must be started")
    parser.add_argument("--ckpts", default=None, help="weights root for an engine started here")


def check_length(params: dict[str, Any], args: argparse.Namespace) -> None:
    """A long video's length is checked against the model and any rounding said."""
    if params.get("frames") is None and params.get("overlap") is None:
        return
    from engine.cli.main import describe_length
    from engine.generation.lengths import plan_length, rules_for

    plan = plan_length(rules_for(args.model), params.get("frames"), params.get("overlap"))  # torch-free
    if plan.rounded:
        print(f"note: {plan.note()}", file=sys.stderr)
    print(describe_length(plan), file=sys.stderr)


def job_params(
    client: EngineClient, base: dict[str, Any], given: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The earlier job's (or just the prompt), then the preset's, then the given parameters, checked."""
    params = dict(base)
    if args.preset is not None:
        presets = client.request("list_presets")["presets"]
        if args.preset not in presets:
            raise ValueError(f"no preset named {args.preset!r}; known: {', '.join(sorted(presets))}")
        params.update(presets[args.preset]["params"])
    params = check_params({**params, **given}, complete=False)
    check_length(params, args)
    return params


def engine_for(args: argparse.Namespace) -> EngineClient:
    from pathlib import Path

    return start_engine(args.model, Path(args.ckpts) if args.ckpts else None)


def run_submit(args: argparse.Namespace) -> int:
    given = check_params({"prompt": args.prompt, **given_params(args, args.model)}, complete=False)
    with engine_for(args) as client:  # started only for parameters that pass
        params = job_params(client, {}, given, args)
        return submit_and_report(client, params, args.wait)


def run_rerun(args: argparse.Namespace) -> int:
    given = given_params(args, args.model)
    if args.prompt is not None:
        given["prompt"] = args.prompt
    given = check_params(given, complete=False)
    with engine_for(args) as client:
        job = client.request("get_job", job_id=args.job)["job"]
        params = job_params(client, dict(job["params"]), given, args)
        return submit_and_report(client, params, args.wait)


def submit_and_report(client: EngineClient, params: dict[str, Any], wait: bool) -> int:
    if wait:
        since = client.request("subscribe", since=0)["seq"]  # only what happens from now on
        del since
    job_id = client.request("submit", params=params)["job_id"]
    print(job_id)
    return follow(client, job_id) if wait else 0


def follow(client: EngineClient, job_id: str) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    tasks: dict[str, int] = {}
    with Progress(*columns, console=console) as progress:
        for event in client.events():
            if event.get("job_id") != job_id:
                continue
            kind = event["event"]
            if kind == "job_progress":
                stage = event["stage"]
                name = stage
                if event.get("chunks", 1) > 1 and stage in ("denoise", "decode", "write"):
                    name = f"{stage} {event['chunk']}/{event['chunks']}"
                if stage not in tasks:
                    tasks[stage] = progress.add_task(name, total=event["total"])
                progress.update(tasks[stage], completed=event["step"], total=event["total"], description=name)
            elif kind == "chunk_finished":
                seconds = event["video_seconds"]
                console.print(
                    f"chunk {event['index'] + 1}/{event['chunks']} written: {seconds:.1f} s of video"
                )
            elif kind == "job_finished":
                progress.stop()
                console.print(f"finished: {event['video']}")
                return 0
            elif kind in ("job_failed", "job_cancelled", "job_interrupted"):
                progress.stop()
                if event.get("partial"):
                    console.print(
                        f"{event['status']}: kept the {event['chunks_done']} finished chunk(s) of "
                        f"{event['chunks']}, {event['frames']} frames: {event['video']}"
                    )
                    return EXIT_FAILED
                console.print(f"{kind.removeprefix('job_')}: {event.get('error', '')}".rstrip(": "))
                return EXIT_FAILED
    return EXIT_FAILED


def run_jobs(args: argparse.Namespace) -> int:
    with connect() as client:
        result = client.request("list_jobs", status=args.status, search=args.search, limit=args.limit)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table("id", "status", "created", "steps", "seed", "prompt")
    import time

    for job in result["jobs"]:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created_at"]))
        params = job["params"]
        table.add_row(
            job["id"], job["status"], created, str(params["steps"]), str(params["seed"]), job["prompt"][:60]
        )
    Console().print(table)
    print(f"{len(result['jobs'])} of {result['total']} job(s)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    with connect() as client:
        job = client.request("get_job", job_id=args.job)["job"]
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    for key in ("id", "status", "prompt", "model", "video_path", "tokens_path", "error"):
        if job.get(key) is not None:
            print(f"{key:>12}: {job[key]}")
    print(f"{'params':>12}: {json.dumps(job['params'])}")
    if job["timings"]:
        print(f"{'timings':>12}: " + ", ".join(f"{k} {v:.1f}s" for k, v in job["timings"].items()))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with connect() as client:
        result = client.request("cancel", job_id=args.job)
    print(f"{result['job_id']}: {result['status']}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    try:
        client = connect()
    except EngineUnavailable as error:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print(f"no engine is running ({error})", file=sys.stderr)
        return EXIT_FAILED
    with client:
        status = client.request("status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            print(f"{key:>18}: {value}")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    with connect() as client:
        if args.save:
            client.request("save_preset", name=args.save, params=given_params(args))
            print(f"saved preset {args.save!r}")
            return 0
        if args.delete:
            client.request("delete_preset", name=args.delete)
            print(f"deleted preset {args.delete!r}")
            return 0
        presets = client.request("list_presets")["presets"]
    for name, preset in presets.items():
        kind = "built in" if preset["builtin"] else "saved"
        print(f"{name:<24} {kind:<9} {json.dumps(preset['params'])}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    with connect() as client:
        client.request("shutdown")
    print("engine stopping")
    return 0


def add_client_commands(commands) -> dict:
    submit = commands.add_parser("submit", help="queue a job on the engine (starting it if needed)")
    add_prompt_argument(submit)
    add_job_options(submit)
    add_engine_options(submit)

    rerun = commands.add_parser("rerun", help="queue a past job again, optionally with changed options")
    rerun.add_argument("job", help="job id")
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
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="one job in full")
    show.add_argument("job")
    show.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")

    status = commands.add_parser("status", help="the engine: device, memory, models loaded, queue")
    status.add_argument("--json", action="store_true")

    presets = commands.add_parser("presets", help="list presets, or save or delete one")
    action = presets.add_mutually_exclusive_group()
    action.add_argument(
        "--save", metavar="NAME", default=None, help="save the job options given here as NAME"
    )
    action.add_argument("--delete", metavar="NAME", default=None, help="delete a saved preset")
    add_param_options(presets, seconds=False)  # a preset is for any model: its length is in frames

    commands.add_parser("stop", help="stop the engine (a running job is marked interrupted)")
    return {
        "submit": run_submit,
        "rerun": run_rerun,
        "jobs": run_jobs,
        "show": run_show,
        "cancel": run_cancel,
        "status": run_status,
        "presets": run_presets,
        "stop": run_stop,
    }
