"""The Generate form's fields <-> job parameters, checked before anything is sent to the engine.

The ranges are the engine's own (`engine.protocol.JobParams`), with the narrower ones the reference's
demo exposes where it has them (LLM CFG 1-15, motion score 0-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

FPS = 8


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: type
    low: float | None = None
    high: float | None = None
    optional: bool = False
    hint: str = ""


FIELDS = [
    Field("cfg", "LLM CFG", float, 1, 15, hint="1-15"),
    Field("motion_score", "motion", float, 0, 1, hint="0-1"),
    Field("seed", "seed", int, 0, 2**63 - 1, hint="ctrl+r: random"),
    Field("temperature", "temperature", float, 0.01, 10, hint=">0"),
    Field("top_k", "top-k", int, 1, 2048, optional=True, hint="empty: off"),
    Field("top_p", "top-p", float, 0.01, 1, optional=True, hint="empty: off"),
    Field("steps", "steps", int, 1, 1000, hint="50"),
]
LENGTH = Field("length", "length", str, hint="e.g. 97 or 12s")


@cache
def defaults() -> dict[str, Any]:
    """The engine's defaults for every parameter (pydantic loads here, after the first paint)."""
    from engine.protocol import JobParams

    return JobParams(prompt="-").model_dump()


def check_field(field: Field, text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, message): the message names the field and the accepted range."""
    text = text.strip()
    if not text:
        return (None, None) if field.optional else (None, f"{field.label} is empty")
    try:
        value = field.kind(text)
    except ValueError:
        noun = "a whole number" if field.kind is int else "a number"
        return None, f"{field.label} must be {noun}, not {text!r}"
    if field.low is not None and value < field.low or field.high is not None and value > field.high:
        return None, f"{field.label} must be between {field.low:g} and {field.high:g}"
    return value, None


def check_length(text: str) -> tuple[int | None, str | None]:
    """'' -> one clip; '97' -> frames; '12s' or '12.5 s' -> seconds at 8 fps."""
    text = text.strip().lower()
    if not text:
        return None, None
    try:
        if text.endswith("s"):
            seconds = float(text[:-1].strip())
            if seconds <= 0:
                raise ValueError
            return max(1, round(seconds * FPS)), None
        frames = int(text)
        if frames <= 0:
            raise ValueError
        return frames, None
    except ValueError:
        return None, f"length must be frames (e.g. 49) or seconds (e.g. 6s), not {text!r}"


def length_note(model: str | None, frames: int | None, overlap: int | None = None) -> str:
    """What a length means for `model`: its chunks and seconds, any rounding, and the maximum."""
    from engine.generation.lengths import limits, plan_length, rules_for

    if model is None:
        return ""
    rules = rules_for(model)
    most = limits(rules, overlap)
    span = f"max {most['max_frames']} frames ({most['max_seconds']:.0f} s)"
    try:
        plan = plan_length(rules, frames, overlap)
    except ValueError as error:
        return str(error)
    if plan.rounded:
        return f"{plan.note()}; {span}"
    return (
        f"{plan.frames} frames = {plan.seconds:.1f} s in {plan.chunks} chunk(s); one clip is "
        f"{most['clip_frames']}, each further chunk adds {most['chunk_frames']}; {span}"
    )


def check_form(
    prompt: str, texts: dict[str, str], model: str | None = None, overlap: int | None = None
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """Every field checked; (params ready to submit, {}) or (None, {field: message}).

    With `model` known (the engine's), the length is also held to that model's maximum.
    """
    errors: dict[str, str] = {}
    params: dict[str, Any] = {"prompt": prompt.strip()}
    if not params["prompt"]:
        errors["prompt"] = "the prompt is empty: describe the video"
    for field in FIELDS:
        value, error = check_field(field, texts.get(field.name, ""))
        if error:
            errors[field.name] = error
        elif value is not None:
            params[field.name] = value
    frames, error = check_length(texts.get("length", ""))
    if error:
        errors["length"] = error
    elif frames is not None:
        params["frames"] = frames
        if model is not None:
            from engine.generation.lengths import plan_length, rules_for

            try:
                plan_length(rules_for(model), frames, overlap)
            except ValueError as error:
                errors["length"] = str(error)
    if errors:
        return None, errors
    from pydantic import ValidationError

    from engine.protocol import JobParams

    try:
        return JobParams(**params).model_dump(exclude_none=True), {}
    except ValidationError as error:  # the engine's own limits, e.g. a prompt that is too long
        for problem in error.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "prompt"
            errors[name if name in texts or name == "prompt" else "length"] = f"{name}: {problem['msg']}"
        return None, errors


def form_texts(params: dict[str, Any]) -> dict[str, str]:
    """Job parameters -> the strings the form shows (for presets, edit-and-rerun)."""
    texts = {}
    for field in FIELDS:
        value = params.get(field.name)
        texts[field.name] = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    frames = params.get("frames")
    texts["length"] = "" if frames is None else str(frames)
    return texts
