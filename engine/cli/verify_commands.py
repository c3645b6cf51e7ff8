"""`landiff-engine verify JOB`: make a past job's semantic tokens again (with --full, its frames too) from its
record and compare their hashes with the recorded ones; on a mismatch, say what differs between the
record's run and this one (weights, versions, device, kernels, options) as the likely causes.

It runs here, in this process (as `generate` does), not through the engine: it loads the model itself
(an engine running beside it keeps its own) and writes nothing but a scratch video it then removes.
JOB is a job id (or its first 4+ characters) from the engine's history, read only, or the path of a
record (the .json beside a video; the video's own path names it too).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.generation.verify import Verification

EXIT_DIFFER = 1
BESIDE = (".mp4", ".npy", ".png")  # a job's other files: its record is beside them


def find_record(given: str) -> Path:
    """The record JOB names: a path (the .json, or a file beside it), else a job of the history."""
    from engine.cli.history import open_history

    path = Path(given).expanduser()
    if path.suffix.lower() in BESIDE:
        path = path.with_suffix(".json")
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"{path}: no such record (the .json written beside a video)")
        return path
    history = open_history()
    if history is None:
        raise ValueError(f"no job {given!r}: there is no job history here; give the .json beside a video")
    with history:
        summary = history.job(given)
    if summary.sidecar_path is None:
        raise ValueError(f"job {summary.id} has no record to verify ({summary.status}): it made no video")
    return Path(summary.sidecar_path)


def run_verify(args: argparse.Namespace) -> int:
    from engine.cli.device_option import parse_device
    from engine.generation.verify import load_record, verify_record

    path = find_record(args.job)
    record = load_record(path)
    device = parse_device(args.device)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say(f"verifying {path} here, in this process (not through the engine)")
    verification = verify_record(record, str(path), device=device, full=args.full, root=args.ckpts, say=say)
    if args.json:
        print(json.dumps(verification.to_json(), indent=2))
    else:
        for line in verification_lines(verification):
            print(line)
    return 0 if verification.matched else EXIT_DIFFER


def verification_lines(verification: Verification) -> list[str]:
    """The short table: weights, then each compared hash; the differences when a hash differs."""
    files = verification.weight_files
    lines = [
        row("weights", f"differ: {len(verification.weights)} of {files} file(s)")
        if verification.weights
        else row("weights", f"same ({files} file(s))")
    ]
    lines += [f"{'':<10}{name}" for name in verification.weights]
    for check in verification.checks:
        if check.outcome == "match":
            lines.append(row(check.what, f"match  {short(check.now)}  {check.note}".rstrip()))
        elif check.outcome == "differ":
            said = f"DIFFER recorded {short(check.recorded)}, now {short(check.now)}"
            lines.append(row(check.what, f"{said}  {check.note}".rstrip()))
        else:
            lines.append(row(check.what, f"skipped: {check.note}"))
    if verification.matched:
        lines.append(f"reproduced on {verification.device}")
        return lines
    if verification.weights:
        lines.append("likely cause: the weights above differ from the job's")
    if not verification.causes:
        if not verification.weights:
            lines.append("nothing recorded differs from this run (weights, versions, device, kernels)")
        return lines
    lines.append("likely causes, recorded -> now:" if not verification.weights else "also, recorded -> now:")
    width = max(len(what) for what, _, _ in verification.causes)
    lines += [f"  {what:<{width}}  {shown(was)} -> {shown(now)}" for what, was, now in verification.causes]
    return lines


def row(what: str, text: str) -> str:
    return f"{what:<10}{text}"


def short(value: str | list[str] | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"{len(value)} chunk(s) " + ",".join(sha[:12] for sha in value)
    return value[:12]


def shown(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def add_verify_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], int]]:
    verify = commands.add_parser(
        "verify",
        help="re-run a job's stage 1 (--full: and stage 2) here from its record and compare the tokens' "
        "(and frames') hashes; exit 1 naming what differs when they do not match",
        description="Make a job's semantic tokens again from its record, in this process (not through the "
        "engine), and compare their SHA-256 with the recorded one; --full renders the video too and "
        "compares each chunk's frames. Exit 0: every compared hash matched; 1: one differs (the table "
        "names what differs between the record's run and this one: weights, versions, device, kernels, "
        "options); 2: refused (no hashes in the record, weights absent, device not here).",
    )
    verify.add_argument(
        "job", help="a job id (or its first 4+ characters) from the engine's history, or a record's .json"
    )
    verify.add_argument("--full", action="store_true", help="also render the video and compare its frames")
    verify.add_argument(
        "--device", default=None, help="torch device to run on (default: the one the job ran on)"
    )
    verify.add_argument(
        "--ckpts",
        type=Path,
        default=None,
        help="weights root (default: the job's, when still there, else $LANDIFF_HOME or ckpts/)",
    )
    verify.add_argument("--json", action="store_true", help="the comparison as JSON")
    return {"verify": run_verify}
