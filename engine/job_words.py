"""How a client words a job, the CLI and the TUI alike: its progress (protocol.ProgressReport, which the
generation layer reports and the wire's JobProgressEvent is: `progress_words`) and its quality record
(protocol.QualityRecord: the CLI's `show`, `quality`, `generate --quality` and the TUI's job page).

Torch-free and pydantic-free at import: the protocol's models are named for the type checker only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.protocol import (
        DownloadFinishedEvent,
        JobStartedEvent,
        JobSummary,
        ProgressReport,
        QualityRecord,
        StatusReply,
    )


def quality_lines(quality: QualityRecord | None) -> list[tuple[str, str]]:
    """(label, text) lines; the caller aligns the labels and escapes the text for its screen."""
    if quality is None:
        return [("quality", "being measured (CLIP score, flicker, motion) after the job")]
    if quality.error:
        return [("quality", f"could not be measured: {quality.error}")]
    lines = [
        ("flicker", f"{luma(quality.flicker)} luma levels (brightness jumps between frames; 0: steady)"),
        ("motion", f"{luma(quality.motion)} luma levels (mean change per pixel between frames)"),
    ]
    clip = quality.clip
    if not clip:
        return [*lines, ("CLIP score", f"skipped: {quality.skipped or ''}")]
    cut = ", prompt cut to 77 tokens" if clip.prompt_truncated else ""
    summary = f"mean {clip.mean:.2f}, min {clip.min:.2f} over {len(clip.scores)} frame(s) ({clip.model}{cut})"
    return [*lines, ("CLIP score", summary), ("per frame", " ".join(f"{score:.1f}" for score in clip.scores))]


def luma(levels: float | None) -> str:
    return "-" if levels is None else f"{levels:.2f}"


# the protocol's progress stages, in their order: each one's title and the unit its rate counts (None: the
# stage's own steps). The tokens bar counts every position the language model writes, frame markers too.
PROGRESS_STAGES: dict[str, tuple[str, str | None]] = {
    "text": ("text encoding", None),
    "tokens": ("tokens", "tok"),
    "denoise": ("denoising", "steps"),
    "decode": ("VAE decode", None),
    "write": ("writing", None),
}
CHUNKED_STAGES = ("denoise", "decode", "write")  # run again for each chunk of a long video


@dataclass(frozen=True)
class ProgressWords:
    """One progress report in words; `progress_words` makes it."""

    title: str  # the stage's own: "denoising"
    name: str  # one bar's: the title, the chunk of a long video, what the step cache skipped
    unit: str | None  # what the stage's rate counts (None: the stage's own steps)
    count: str  # "20/50"
    rate: str  # "4.0 steps/s"; a stage without a unit, its seconds so far: "2.1 s"; "" before it has a rate
    eta_s: float | None  # the whole job's remaining seconds once estimated, else the stage's
    job_eta: bool = False  # eta_s is the whole job's (else the stage's: no cost of the job is known yet)

    @property
    def detail(self) -> str:
        """The count and the rate: "20/50  4.0 steps/s"."""
        return f"{self.count}  {self.rate}" if self.rate else self.count


def progress_words(progress: ProgressReport) -> ProgressWords:
    """A report of the generation layer or the wire's JobProgressEvent (a ProgressReport too) in words."""
    title, unit = PROGRESS_STAGES.get(progress.stage, (progress.stage, None))
    name = title
    if progress.chunks > 1 and progress.stage in CHUNKED_STAGES:
        name = f"{name} {progress.chunk}/{progress.chunks}"
    if progress.stage == "denoise" and progress.cache_skips:
        name = f"{name}, cache skipped {progress.cache_skips}/{progress.dit_calls}"
    return ProgressWords(
        title=title,
        name=name,
        unit=unit,
        count=f"{progress.step}/{progress.total}",
        rate=rate_text(progress.step, progress.rate, unit),
        eta_s=progress.job_eta_s if progress.job_eta_s is not None else progress.eta_s,
        job_eta=progress.job_eta_s is not None,
    )


def rate_text(step: int, rate: float, unit: str | None) -> str:
    """A stage's speed: its rate in its unit ("4.0 steps/s"), or, for a stage whose steps are not a unit
    anyone counts (text encoding's two encoders, a chunk's one decode), the seconds it has taken so far."""
    if not rate:
        return ""
    return f"{rate:.1f} {unit}/s" if unit else f"{step / rate:.1f} s"


def resumed_words(job: JobStartedEvent | JobSummary | Mapping[str, Any]) -> str | None:
    """Words for a long video that continued from its resume checkpoint after a killed or stopped engine:
    "resumed at chunk 4 of 7 (chunks 1-3 kept)"; None for one that ran in one go. `job`: a job_started
    event (its `resumed_at_chunk` and `chunks`) or a job's summary (its `resumed_at_chunk`; its chunks from
    its model and parameters), as models or plain data."""
    fields = job if isinstance(job, Mapping) else job.model_dump()
    done = fields.get("resumed_at_chunk")
    if done is None:
        return None
    chunks = fields.get("chunks")
    if chunks is None and "params" in fields:
        chunks = planned_chunks(str(fields.get("model")), fields["params"] or {})
    kept = "chunk 1 kept" if done == 1 else f"chunks 1-{done} kept"
    of = "" if chunks is None else f" of {chunks}"
    return f"resumed at chunk {done + 1}{of} ({kept})"


def planned_chunks(model: str, params: Mapping[str, Any]) -> int | None:
    """The chunks a job of `model` with these parameters renders; None when they do not say."""
    from engine.generation.lengths import plan_length, rules_for

    try:
        return plan_length(rules_for(model), params.get("frames"), params.get("overlap")).chunks
    except (KeyError, TypeError, ValueError):
        return None


def waiting_words(status: StatusReply, job_id: str) -> str:
    """Why a queued job has not started, from the engine's status: its queue paused, no worker to run it,
    or the jobs ahead of it."""
    if status.queue_paused:
        return "the queue is paused: `landiff-engine queue resume` (or p in the Queue tab) starts it again"
    if not status.workers:
        return f"no worker to run it: {status.no_worker or 'every one was lost'}"
    ahead = status.queue.index(job_id) if job_id in status.queue else None
    busy = sum(worker.job_id is not None for worker in status.workers)
    if ahead is None:
        return "about to start"
    if ahead == 0:
        return "next, as soon as a worker is free" if busy == len(status.workers) else "next"
    return f"{ahead} job(s) ahead of it in the queue"


def generated_words(written: int, kept: int) -> str:
    """What making a generated model's weights did, in true words (nothing is fetched)."""
    if not written:
        return "the tiny model's weights are all there; nothing written"
    there = f"; {kept} already there" if kept else ""
    return f"wrote {written} generated file{'s' if written != 1 else ''}{there}"


def download_words(event: DownloadFinishedEvent) -> str:
    """A finished download (or a generated model's making) in one line: what was fetched or written."""
    if event.generated:
        return generated_words(len(event.written), event.skipped)
    return f"{len(event.fetched)} fetched, {event.skipped} already present"
