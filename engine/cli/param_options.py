"""The job parameters as command-line options, built from the schema (`engine.params`).

Every option defaults to None (not given), so that `submit` and `rerun` can tell what the user set from
what a preset or the earlier job should supply. Values are parsed and checked by the schema's own code
when the command runs, so a bad one is one line naming the parameter, its range and the value.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from engine.params import PARAMS, STAGES, Param, for_stages

HELP_MODEL = "landiff"  # whose limits the help states: the release


def escape(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %


def add_prompt_argument(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    prompt = next(p for p in PARAMS if p.name == "prompt")
    if optional:
        parser.add_argument(
            "--prompt", default=None, help=escape(f"a changed prompt: {prompt.describe(HELP_MODEL)}")
        )
    else:
        parser.add_argument("prompt", help=escape(prompt.describe(HELP_MODEL)))


def add_param_options(
    parser: argparse.ArgumentParser, stages: Iterable[str] = STAGES, *, seconds: bool = True
) -> list[Param]:
    """An option for each schema parameter that the stages a command runs read; the prompt (positional)
    aside. `seconds`: a length may also be given as --seconds (the command knows its model's frame rate).
    Returns the parameters added, for `given_params`."""
    added = []
    for param in for_stages(stages):
        if param.required:
            continue
        help_text = escape(param.describe(HELP_MODEL))
        metavar = param.name.upper()
        if param.seconds and seconds:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(param.flag, default=None, metavar=metavar, help=help_text + "; or e.g. 12s")
            group.add_argument(
                "--seconds",
                default=None,
                metavar="SECONDS",
                help=f"the {param.label} in seconds, rounded up to whole frames at the model's frame rate",
            )
        else:
            parser.add_argument(param.flag, default=None, metavar=metavar, help=help_text)
        added.append(param)
    parser.set_defaults(job_params=added)
    return added


def given_params(args: argparse.Namespace, model: str | None = None) -> dict[str, Any]:
    """The parameters given on the command line, parsed and checked; ValueError naming the first bad one.

    A length in seconds (--seconds 12.05, --frames 12s) needs `model`, whose frame rate turns it into
    frames (rounded up, as everywhere: `engine.generation.lengths.frames_for_seconds`).
    """
    given: dict[str, Any] = {}
    for param in args.job_params:
        text = getattr(args, param.name, None)
        if param.seconds:
            text = length_text(text, getattr(args, "seconds", None))
        if text is None:
            continue
        if param.seconds and text.strip().lower().endswith("s"):
            if model is None:
                raise ValueError(f"give {param.flag} in frames here; seconds need a model's frame rate")
            from engine.generation.lengths import parse_length, rules_for

            given[param.name] = param.check(parse_length(text, rules_for(model)))
        else:
            given[param.name] = param.parse(text)
    return given


def length_text(frames: str | None, seconds: str | None) -> str | None:
    if seconds is None:
        return frames
    return seconds.strip() + "s"
