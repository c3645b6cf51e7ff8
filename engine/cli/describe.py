"""How the CLI words a job's length (for `generate` and `submit`) and a refused request's fields (plain
words, not pydantic's); a job's quality record is worded in engine/job_words.py, shared with the TUI."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

    from engine.generation.lengths import ChunkPlan


def describe_length(plan: ChunkPlan) -> str:
    chunks = "1 chunk"
    if plan.chunks > 1:
        chunks = f"{plan.chunks} chunks of {plan.window} latent frames, overlap {plan.overlap}"
    return f"{plan.frames} frames ({plan.seconds:.1f} s at {plan.fps} fps) in {chunks}"


# pydantic's error types in plain words: what the value must be (its ctx fills the braces)
PLAIN_RULES = {
    "string_too_long": "at most {max_length} characters",
    "string_too_short": "at least {min_length} character(s)",
    "too_long": "at most {max_length} item(s)",
    "too_short": "at least {min_length} item(s)",
    "greater_than_equal": "at least {ge}",
    "greater_than": "more than {gt}",
    "less_than_equal": "at most {le}",
    "less_than": "less than {lt}",
    "literal_error": "one of {expected}",
    "enum": "one of {expected}",
    "missing": "required",
    "extra_forbidden": "not a known field",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
}
SHOWN_VALUE = 40  # a given value longer than this is not repeated back


def plain_validation(error: ValidationError, what: str = "request") -> str:
    """A model's ValidationError as one line of plain words, each field named as a person writes it:
    "job id: at most 64 characters", "limit: at least 1 (got 0)", "status: one of 'queued', ... (got 'x')"."""
    problems = error.errors()
    parts = []
    for problem in problems[:5]:
        where = ".".join(str(part).replace("_", " ") for part in problem["loc"]) or what
        parts.append(f"{where}: {plain_rule(problem)}")
    more = len(problems) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def plain_rule(problem: ErrorDetails) -> str:
    kind, context = problem["type"], problem.get("ctx") or {}
    if kind == "value_error" and "error" in context:  # a validator's own ValueError: its words already
        return str(context["error"])
    rule = PLAIN_RULES.get(kind)
    if rule is None:
        message = problem["msg"]
        return message[:1].lower() + message[1:]
    text = rule.format(**context)
    given = problem.get("input")
    repeated = kind not in ("missing", "string_too_long", "string_too_short")  # not a long text back
    if repeated and isinstance(given, int | float | str):
        shown = repr(given)
        if len(shown) <= SHOWN_VALUE:
            text += f" (got {shown})"
    return text
