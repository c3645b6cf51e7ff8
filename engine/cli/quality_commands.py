"""`landiff-engine quality JOB`: (re)measure a finished job's quality through the engine and print its
record (in engine.cli.describe's words, as `show` does).

Through the engine, not here: the engine is the only writer of the store and the sidecar, and its probe
already has the CLIP loaded when there is a backlog. Measuring starts the engine as every client
command does.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from engine.job_words import quality_lines

EXIT_FAILED = 1


def run_quality(args: argparse.Namespace) -> int:
    from engine.cli.client_commands import engine_for

    console = Console(stderr=True)
    with engine_for(args) as client:
        client.request("subscribe", since=client.request("status")["seq"])
        job_id = client.request("probe_quality", job_id=args.job)["job_id"]
        console.print(f"measuring job {job_id} (Ctrl-C detaches; the engine records it all the same)")
        try:
            quality = next(
                event["quality"]
                for event in client.events()
                if event["event"] == "job_quality" and event["job_id"] == job_id
            )
        except KeyboardInterrupt:
            console.print(f"detached; `landiff-engine show {job_id}` shows it once measured")
            return 0
        except StopIteration:  # pragma: no cover - events() ends only when the engine goes away
            return EXIT_FAILED
    if args.json:
        print(json.dumps(quality, indent=2))
    else:
        for label, text in quality_lines(quality):
            print(f"{label:>12}: {text}")
    return EXIT_FAILED if quality.get("error") else 0


def add_quality_commands(commands) -> dict:
    from engine.cli.client_commands import add_engine_options

    quality = commands.add_parser(
        "quality",
        help="(re)measure a finished job's quality: CLIP score against its prompt, flicker, motion",
    )
    quality.add_argument("job", help="job id, or its first 4+ characters")
    quality.add_argument("--json", action="store_true", help="the whole record, per-frame scores too")
    add_engine_options(quality)
    return {"quality": run_quality}
