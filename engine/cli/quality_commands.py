"""`landiff-engine quality JOB`: (re)measure a finished job's quality through the engine and print its
record (in engine.job_words' words, as `show` does).

Through the engine, not here: the engine is the only writer of the store and the sidecar, and its probe
already has the CLIP loaded when there is a backlog. Measuring starts the engine as every client
command does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from rich.console import Console

from engine.job_words import quality_lines

EXIT_FAILED = 1


def run_quality(args: argparse.Namespace) -> int:
    from engine.cli.client_commands import engine_for
    from engine.protocol import JobQualityEvent, ProbeQuality, QualityRecord, Status, Subscribe

    console = Console(stderr=True)
    request = ProbeQuality(job_id=args.job)
    with engine_for(args) as client:
        client.call(Subscribe(since=client.call(Status()).seq))
        job_id = client.call(request).job_id
        console.print(f"measuring job {job_id} (Ctrl-C detaches; the engine records it all the same)")
        quality: QualityRecord | None = None
        try:
            for event in client.event_models():
                if isinstance(event, JobQualityEvent) and event.job_id == job_id:
                    quality = event.quality
                    break
        except KeyboardInterrupt:
            console.print(f"detached; `landiff-engine show {job_id}` shows it once measured")
            return 0
    if quality is None:  # pragma: no cover - the events end only when the engine goes away
        return EXIT_FAILED
    if args.json:
        print(json.dumps(quality.model_dump(mode="json"), indent=2))
    else:
        for label, text in quality_lines(quality):
            print(f"{label:>12}: {text}")
    return EXIT_FAILED if quality.error else 0


def add_quality_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, Callable[[argparse.Namespace], int]]:
    from engine.cli.client_commands import add_engine_options

    quality = commands.add_parser(
        "quality",
        help="(re)measure a finished job's quality: CLIP score against its prompt, flicker, motion",
    )
    quality.add_argument("job", help="job id, or its first 4+ characters")
    quality.add_argument("--json", action="store_true", help="the whole record, per-frame scores too")
    add_engine_options(quality)
    return {"quality": run_quality}
