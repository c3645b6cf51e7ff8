"""The Generate form's fields <-> job parameters, checked before anything is sent to the engine.

The fields, labels, hints, ranges and normalisation are the job schema's (`engine.params`), checked by
its own code, so the form accepts exactly what the engine does. A length may be typed in frames (97) or
seconds (12s), turned into frames by the engine's own rule (`engine.generation.lengths`).
"""

from __future__ import annotations

from typing import Any

from engine.params import PARAMS, Param
from engine.params import defaults as schema_defaults

FIELDS: list[Param] = [param for param in PARAMS if param.in_form]
PROMPT = next(param for param in PARAMS if param.name == "prompt")
RELEASE = "landiff"  # whose frame rate turns seconds into frames before the engine says its model


def defaults() -> dict[str, Any]:
    return schema_defaults()


def check_field(field: Param, text: str, model: str | None = None) -> tuple[Any, str | None]:
    """(value, None) or (None, message): the message names the parameter, its range and the value."""
    try:
        if field.seconds:
            from engine.generation.lengths import parse_length, rules_for

            return field.check(parse_length(text, rules_for(model or RELEASE))), None
        return field.parse(text), None
    except ValueError as error:
        return None, str(error)


def check_length(text: str, model: str | None = None) -> tuple[int | None, str | None]:
    """'' -> one clip; '97' -> frames; '12s' or '12.5 s' -> seconds at the model's frame rate, rounded up."""
    return check_field(next(field for field in FIELDS if field.seconds), text, model)


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
    params: dict[str, Any] = {}
    try:
        params["prompt"] = PROMPT.check(prompt)
    except ValueError as error:
        errors["prompt"] = str(error)
    for field in FIELDS:
        value, problem = check_field(field, texts.get(field.name, ""), model)
        if problem:
            errors[field.name] = problem
        elif value is not None:
            params[field.name] = value
    if model is not None and params.get("frames") is not None:
        from engine.generation.lengths import plan_length, rules_for

        try:
            plan_length(rules_for(model), params["frames"], overlap)
        except ValueError as error:
            errors["frames"] = str(error)
    if errors:
        return None, errors
    return params, {}


def form_texts(params: dict[str, Any]) -> dict[str, str]:
    """Job parameters -> the strings the form shows (for presets, edit-and-rerun)."""
    texts = {}
    for field in FIELDS:
        value = params.get(field.name)
        texts[field.name] = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return texts
