"""How the Gallery and a job's page word a past job: its status in a short word (with a legend for the few
that need one), its length as the engine makes it (rounded up to a chunk boundary; what a cancelled job
kept), and its parameters as a person reads them: each by its label in the Generate form, a default named
as such, an unset value by what it means ("off", "one clip"), never a Python value (`None`).

Imported after the first frame (by the Gallery and the job page); the length rules load on first use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from engine.params import by_name, fps_text, show

if TYPE_CHECKING:
    from engine.generation.lengths import ChunkPlan
    from engine.params import Param
    from engine.protocol import JobSummary

# the Gallery's status column: a word of at most 8 letters each, the longest status taking 17 before
SHORT_STATUS = {
    "queued": "queued",
    "running": "running",
    "finished": "done",
    "failed": "failed",
    "cancelled": "cancel",
    "cancelled_partial": "kept",  # with the chunks kept: "kept 1/3"
    "interrupted": "intr",
}
# what the words that need it mean, under the list when a row shows them
LEGEND = {
    "kept": "kept n/m: cancelled, n of m chunks kept",
    "intr": "intr: interrupted",
}


@lru_cache(maxsize=256)
def plan_for(model: str, frames: int | None, overlap: int | None) -> ChunkPlan | None:
    """The chunk plan the engine made for these parameters; None for a model or a length this version does
    not know (an older engine's job)."""
    from engine.generation.lengths import plan_length, rules_for

    try:
        return plan_length(rules_for(model), frames, overlap)
    except (KeyError, ValueError, TypeError):
        return None


def job_plan(job: JobSummary) -> ChunkPlan | None:
    frames, overlap = job.params.get("frames"), job.params.get("overlap")
    if not isinstance(frames, int | None) or not isinstance(overlap, int | None):
        return None
    return plan_for(job.model, frames, overlap)


def kept_chunks(job: JobSummary) -> int | None:
    """The chunks a job cancelled part way kept (the ones it had finished); None for any other job, or
    when its row does not say (an older engine's)."""
    if job.status != "cancelled_partial" or not job.chunk_timings:
        return None
    return len(job.chunk_timings)


def short_status(job: JobSummary) -> str:
    """The Gallery's status cell: "done", "kept 1/3"."""
    word = SHORT_STATUS.get(job.status, job.status)
    kept, plan = kept_chunks(job), job_plan(job)
    if kept is not None and plan is not None:
        return f"{word} {kept}/{plan.chunks}"
    return word


def length_cell(job: JobSummary) -> str:
    """The Gallery's length cell: the video's seconds, "20.1 s" (what a cancelled job kept, for one that
    kept part of it)."""
    plan = job_plan(job)
    if plan is None:
        frames = job.params.get("frames")
        return "?" if frames is None else f"{frames} fr"
    kept = kept_chunks(job)
    frames = plan.frames if kept is None else plan.frames_after(kept)
    return f"{frames / plan.fps:.1f} s"


def legend(jobs: list[JobSummary]) -> str:
    """What the short words of these jobs' statuses mean, for those that need it: "" when none does."""
    words = {SHORT_STATUS.get(job.status, job.status) for job in jobs}
    return "; ".join(text for word, text in LEGEND.items() if word in words)


def status_words(job: JobSummary) -> str:
    """A job's status in words, for its page: "finished", "cancelled, part kept" (its `kept` line says
    how much)."""
    return "cancelled, part kept" if job.status == "cancelled_partial" else job.status


def kept_words(job: JobSummary) -> str:
    """What a job cancelled part way kept: "kept 1 of 3 chunks, 6.1 s (49 frames) as a shorter video"."""
    kept, plan = kept_chunks(job), job_plan(job)
    if kept is None or plan is None:
        return "kept the chunks finished before, as a shorter video"
    frames = plan.frames_after(kept)
    return (
        f"kept {kept} of {plan.chunks} chunk{'s' if plan.chunks != 1 else ''}, "
        f"{frames / plan.fps:.1f} s ({frames} frames) as a shorter video"
    )


def length_words(job: JobSummary) -> str:
    """The length the job asked for as the engine made it: "20.1 s: 161 frames at 8 fps in 3 chunks
    (asked for 160, rounded up to a chunk boundary)"; "one clip (default): 4.1 s: 33 frames at 8 fps"."""
    frames = job.params.get("frames")
    plan = job_plan(job)
    if plan is None:
        return "one clip (default)" if frames is None else f"{show(frames)} frames"
    chunks = f" in {plan.chunks} chunks" if plan.chunks > 1 else ""
    made = f"{plan.seconds:.1f} s: {plan.frames} frames at {plan.fps} fps{chunks}"
    if frames is None:
        return f"one clip (default): {made}"
    if plan.rounded:
        return f"{made} (asked for {frames}, rounded up to a chunk boundary)"
    return made


def value_words(param: Param, value: Any) -> str:
    """One parameter's value as a person reads it: "7.5 (default)", "off (default)", "0.9"."""
    default = " (default)" if value == param.default else ""
    if value is None:
        return f"{param.unset or 'unset'}{default}"
    if param.name == "cache" and value == 0:
        return f"off{default}"
    unit = f" {param.unit}" if param.unit else ""
    return f"{show(value)}{unit}{default}"


def param_lines(job: JobSummary) -> list[tuple[str, str]]:
    """(label, words) for each of the job's parameters but the prompt, in the schema's order: the length
    first, as made; the overlap only where there is more than one chunk; any parameter this version does
    not know (an older engine's) by its name, as it is."""
    known = by_name()
    plan = job_plan(job)
    lines = [("length", length_words(job))]
    if job.status == "cancelled_partial":
        lines.append(("kept", kept_words(job).removeprefix("kept ")))
    for name, param in known.items():
        if name in ("prompt", "frames"):
            continue
        if name == "fps":
            lines.append((param.label, fps_text(job.params, job.model)))  # an older job's too: the model's
        elif name == "overlap":
            if plan is not None and plan.chunks > 1:
                given = job.params.get("overlap")
                mark = " (the model's default)" if given is None else ""
                frames = "latent frame" if plan.overlap == 1 else "latent frames"
                lines.append((param.label, f"{plan.overlap} {frames}{mark}"))
        elif name in job.params:
            lines.append((param.label, value_words(param, job.params[name])))
    lines += [(name, str(value)) for name, value in job.params.items() if name not in known]
    return lines
