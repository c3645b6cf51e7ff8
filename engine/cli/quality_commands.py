"""`landiff-engine quality JOB`: (re)measure a finished job's quality through the engine, and the lines
that `quality` and `show` print for a quality record.

Through the engine, not here: the engine is the only writer of the store and the sidecar, and its probe
already has the CLIP loaded when there is a backlog. Measuring starts the engine as every client
command does.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

EXIT_FAILED = 1


def quality_lines(quality: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, text) lines of a quality record (protocol.QualityRecord), for `show`, `quality` and
    `generate --quality`."""
    if quality is None:
        return [("quality", "not measured yet (the engine's probe measures finished jobs after them)")]
    if quality.get("error"):
        return [("quality", f"could not be measured: {quality['error']}")]
    lines = [
        ("flicker", f"{quality['flicker']:.2f} luma levels (brightness jumps between frames; 0 = steady)"),
        ("motion", f"{quality['motion']:.2f} luma levels (mean change per pixel between frames)"),
    ]
    clip = quality.get("clip")
    if clip:
        cut = ", prompt cut to 77 tokens" if clip["prompt_truncated"] else ""
        lines.append(
            (
                "CLIP score",
                f"mean {clip['mean']:.2f}, min {clip['min']:.2f} over {len(clip['scores'])} frame(s) "
                f"({clip['model']}{cut})",
            )
        )
    else:
        lines.append(("CLIP score", f"skipped: {quality.get('skipped')}"))
    return lines


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
