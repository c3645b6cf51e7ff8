"""`landiff-engine weights status | verify | download`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from engine import settings
from engine.cli.output import OutputConsole
from engine.client import EngineClient, EngineUnavailable, connect
from engine.job_words import download_words
from engine.weights.downloads import (
    DownloadProgress,
    download_release,
    downloader_for,
    file_states,
    planned_files,
    read_checksums,
    size_checked_only,
    slim_flan_t5,
    verify,
)
from engine.weights.layout import HOME_ENV, SOURCES, weights_root, where_it_looked

if TYPE_CHECKING:
    from engine.protocol import RootCandidate, WeightFileState

EXIT_FAILED = 1


def add_weights_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], int]]:
    weights = commands.add_parser("weights", help="see, download and verify the model weights")
    verbs = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--ckpts", type=Path, default=None, help=f"weights root (default: ${HOME_ENV}, ./ckpts, data dir)"
    )
    common.add_argument(
        "--only", choices=("llm", "diffusion", "all"), default="all", help="which stage's files"
    )
    common.add_argument(
        "--checksums", type=Path, default=None, help="a CHECKSUM.md5 list replacing the release's"
    )
    status = verbs.add_parser(
        "status", parents=[common], help="per file: verified, present, partial, missing, corrupt"
    )
    status.add_argument("--json", action="store_true")
    verbs.add_parser("verify", parents=[common], help="re-check the MD5 of every present file (reads ~25 GB)")
    download = verbs.add_parser(
        "download", parents=[common], help="fetch what is missing, resuming partial files"
    )
    download.add_argument(
        "--clip",
        action="store_true",
        help="also the quality probe's optional CLIP (openai/clip-vit-base-patch32, ~600 MB)",
    )
    download.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="on every node of this Ray cluster (auto, or HEAD:PORT) that offers --ray-resource, each into "
        "its own weights root (or --ckpts, a path meant for every node); one line per node",
    )
    download.add_argument(
        "--ray-resource",
        default="GPU",
        metavar="NAME",
        help="with --ray: the nodes that offer this resource, as serve --ray uses them (default: GPU)",
    )
    download.add_argument(
        "--model",
        default="landiff",
        help="with --ray: landiff (the release, fetched) or tiny (made on each node) (default: landiff)",
    )
    download.add_argument(
        "--source",
        choices=SOURCES,
        default="huggingface",
        help="where the files come from: the Hugging Face hub (HF_ENDPOINT) or ModelScope "
        "(MODELSCOPE_ENDPOINT); checked against the same checksums either way (default: huggingface)",
    )
    verbs.add_parser(
        "slim-flan",
        parents=[common],
        help="keep only flan-T5's encoder, in bf16, and delete the rest (saves disk)",
    )
    verbs.add_parser("cancel", help="cancel the engine's running download (partial files stay resumable)")
    return {"weights": run_weights}


def checksums_of(args: argparse.Namespace) -> dict[str, str] | None:
    path = args.checksums or settings.CHECKSUMS.path()
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"--checksums {path} does not exist")
    return read_checksums(path)


def run_weights(args: argparse.Namespace) -> int:
    root = args.ckpts or weights_root()
    if args.weights_command == "cancel":
        from engine.protocol import CancelDownload

        with connect() as client:
            client.call(CancelDownload())
        print("download cancelling; run `landiff-engine weights download` to resume")
        return 0
    if args.weights_command == "slim-flan":
        freed = slim_flan_t5(root)
        print(
            f"flan-T5 is now encoder-only bf16 in {root / 'flan-t5-xxl' / 'model.safetensors'}; "
            f"freed {freed / 2**30:.2f} GiB"
        )
        return 0
    handler = {"status": run_status, "verify": run_verify, "download": run_download}[args.weights_command]
    return handler(args, root)


def run_status(args: argparse.Namespace, root: Path) -> int:
    from engine.protocol import RootCandidate, WeightFileState

    # the optional CLIP is listed with all files, not with one stage's
    states = file_states(root, planned_files(root, args.only, checksums_of(args), clip=args.only == "all"))
    # as the engine's weights_status reply holds them
    files = [WeightFileState.model_validate(vars(state)) for state in states]
    looked = [RootCandidate.model_validate(place) for place in where_it_looked(args.ckpts)]
    if args.json:
        report = {
            "root": str(root),
            "looked": [place.model_dump(mode="json") for place in looked],
            "files": [file.model_dump(mode="json") for file in files],
        }
        print(json.dumps(report, indent=2))
    else:
        print_weights(OutputConsole(), str(root), files, looked)
        print(weights_summary(files))
    complete = all(file.state in ("verified", "present") for file in files if not file.optional)
    return 0 if complete else EXIT_FAILED


def print_weights(
    console: Console, root: str, files: Sequence[WeightFileState], looked: Sequence[RootCandidate]
) -> None:
    """A table of the files and their states, then where the weights root was looked for."""
    table = Table("file", "state", "size", title=f"weights in {root}")
    for file in files:
        size = "" if file.size is None else f"{file.size / 2**20:,.1f} MiB"
        table.add_row(file.local, file.state + (" (optional)" if file.optional else ""), size)
    console.print(table)
    console.print("where it looked, in order:")
    for place in looked:
        verdict = "used" if place.chosen else ("outranked" if place.applies else "not there")
        where = f"{place.path} ({verdict})" if place.path else "not set"
        console.print(f"  {place.rule}: {where}", highlight=False, soft_wrap=True)


def weights_summary(files: Sequence[WeightFileState]) -> str:
    """One line: how many files are verified, what is missing or damaged, and the command to run next;
    then, when they are not all there, the optional CLIP's state (the quality probe's)."""
    optional = [file for file in files if file.optional]
    required = [file for file in files if not file.optional]
    count = {name: sum(file.state == name for file in required) for name in STATES}
    parts = [f"{count['verified']} of {len(required)} file(s) verified"]
    if count["present"]:
        parts.append(f"{count['present']} present but not checked")
    lacking = count["missing"] + count["partial"] + count["corrupt"]
    if lacking:
        parts.append(
            f"{count['missing']} missing, {count['partial']} partly downloaded, {count['corrupt']} damaged"
        )
        step = "`landiff-engine weights download` fetches them (a partial file resumes)"
    elif count["present"]:
        step = "`landiff-engine weights verify` checks them"
    else:
        step = "ready"
    line = "; ".join(parts) + f". Next: {step}"
    lacking_clip = [file for file in optional if file.state not in ("verified", "present")]
    if lacking_clip:
        line += (
            f"\nThe quality probe's optional CLIP lacks {len(lacking_clip)} of {len(optional)} file(s): "
            "`landiff-engine weights download --clip` fetches them (without it, no CLIP score)"
        )
    return line


STATES = ("verified", "present", "missing", "partial", "corrupt")


def progress_bar(console: Console) -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console)


def run_verify(args: argparse.Namespace, root: Path) -> int:
    console = Console(stderr=True)
    files = planned_files(root, args.only, checksums_of(args), clip=args.only == "all")
    with progress_bar(console) as progress:
        task = progress.add_task("verifying", total=None)
        results = verify(
            root, files, lambda name, done, total: progress.update(task, completed=done, total=total)
        )
    bad = [name for name, ok in results.items() if not ok]
    for name in bad:
        console.print(f"checksum mismatch: {root / name}")
    console.print(f"{len(results) - len(bad)} of {len(results)} file(s) check out")
    unsure = size_checked_only(root, files)
    if unsure:
        console.print(
            f"{len(unsure)} file(s) have no published checksum and no digest from the hub, so only their "
            f"size is checked (or nothing, if this tool did not fetch them): {', '.join(unsure)}"
        )
    return EXIT_FAILED if bad else 0


def run_ray_download(args: argparse.Namespace) -> int:
    """`weights download --ray`: the cluster's nodes each make their weights complete; one line per node."""
    from engine.daemon.ray_workers import connect, disconnect, fetch_on_nodes, resource_refusal
    from engine.daemon.startup import StartRefused
    from engine.specs import get_spec

    console = Console(stderr=True)
    try:
        get_spec(args.model)
    except (KeyError, ValueError) as error:
        console.print(f"--model {args.model}: {error}", highlight=False)
        return 2
    if args.checksums is not None:
        console.print("--checksums is not sent to the nodes: set LANDIFF_CHECKSUMS on each instead")
        return 2
    refusal = resource_refusal(args.ray_resource)
    try:
        if refusal is not None:
            raise StartRefused(refusal)
        connect(args.ray)
    except StartRefused as error:
        console.print(str(error), highlight=False, soft_wrap=True)
        return 2
    try:
        complete = fetch_on_nodes(
            args.model,
            args.ckpts,
            args.ray_resource,
            lambda line: print(line, flush=True),
            args.only,
            args.clip,
            args.source,
        )
    finally:
        disconnect()
    return 0 if complete else EXIT_FAILED


def run_download(args: argparse.Namespace, root: Path) -> int:
    if args.ray is not None:
        return run_ray_download(args)
    from engine.specs import get_spec

    if get_spec(args.model).random_weights:
        Console(stderr=True).print(
            f"--model {args.model}: only with --ray (the engine makes this model's random weights itself)"
        )
        return 2
    if args.ckpts is None and args.checksums is None:
        try:
            client = connect()
        except EngineUnavailable:
            client = None
        if client is not None:  # the engine downloads, so the transfer outlives this terminal
            with client:
                return follow_engine_download(client, args.only, args.clip, args.source)
    console = Console(stderr=True)
    with progress_bar(console) as progress:
        total = progress.add_task("total", total=None)
        current: dict[str, TaskID] = {}

        def on_progress(event: DownloadProgress) -> None:
            if event.file not in current:
                current[event.file] = progress.add_task(event.file, total=event.file_total)
            progress.update(current[event.file], completed=event.file_done)
            progress.update(total, completed=event.done, total=event.total or None)

        downloader = downloader_for(args.source, root, on_progress=on_progress)
        files, report = download_release(downloader, args.only, checksums_of(args), args.clip)
    for name in report.refetched:
        console.print(f"{name}: checksum mismatch on the first try, fetched again and verified")
    for name, why in report.failed.items():
        console.print(f"{name}: {why}; removed, run the download again")
    console.print(
        f"{len(report.fetched)} fetched, {len(report.skipped)} already present, {len(report.failed)} failed "
        f"-> {root}"
    )
    return EXIT_FAILED if report.failed else 0


def follow_engine_download(
    client: EngineClient, only: str, clip: bool = False, source: str = "huggingface"
) -> int:
    from engine import protocol as p

    console = Console(stderr=True)
    client.call(p.Subscribe(since=client.call(p.Status()).seq))
    # validated from a dict: `only` and `source` are --only's and --source's text, choices argparse allows
    request = {"only": only, "clip": clip, "source": source}
    started = client.call(p.DownloadWeights.model_validate(request))
    console.print(
        f"the engine is downloading from {source} into {started.root} (Ctrl-C detaches; the download goes on)"
    )
    try:
        with progress_bar(console) as progress:
            total = progress.add_task("total", total=None)
            for event in client.event_models():
                if isinstance(event, p.DownloadProgressEvent):
                    progress.update(total, completed=event.done, total=event.total or None)
                elif isinstance(event, p.DownloadFinishedEvent):
                    progress.stop()
                    console.print(download_words(event))
                    for name, why in event.failed.items():
                        console.print(f"{name}: {why}; removed, run the download again")
                    return EXIT_FAILED if event.failed else 0
                elif isinstance(event, p.DownloadFailedEvent | p.DownloadCancelledEvent):
                    progress.stop()
                    console.print(event.error if isinstance(event, p.DownloadFailedEvent) else event.message)
                    return EXIT_FAILED
    except KeyboardInterrupt:
        console.print("detached; the engine keeps downloading (`landiff-engine weights cancel` stops it)")
        return 0
    return EXIT_FAILED
