"""How a client words a job, the CLI and the TUI alike: its progress bars' names (for the generation
layer's Progress and the wire's JobProgressEvent) and its quality record (protocol.QualityRecord, as a
dict: the CLI's `show`, `quality`, `generate --quality` and the TUI's job page)."""

from __future__ import annotations

from typing import Any, Protocol


def quality_lines(quality: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, text) lines; the caller aligns the labels and escapes the text for its screen."""
    if quality is None:
        return [("quality", "being measured (CLIP score, flicker, motion) after the job")]
    if quality.get("error"):
        return [("quality", f"could not be measured: {quality['error']}")]
    lines = [
        ("flicker", f"{quality['flicker']:.2f} luma levels (brightness jumps between frames; 0: steady)"),
        ("motion", f"{quality['motion']:.2f} luma levels (mean change per pixel between frames)"),
    ]
    clip = quality.get("clip")
    if not clip:
        return [*lines, ("CLIP score", f"skipped: {quality.get('skipped') or ''}")]
    cut = ", prompt cut to 77 tokens" if clip["prompt_truncated"] else ""
    scores = clip["scores"]
    summary = f"mean {clip['mean']:.2f}, min {clip['min']:.2f} over {len(scores)} frame(s)"
    summary += f" ({clip['model']}{cut})"
    return [*lines, ("CLIP score", summary), ("per frame", " ".join(f"{score:.1f}" for score in scores))]


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


class ProgressLike(Protocol):
    """A progress report: the generation layer's Progress or the wire's JobProgressEvent."""

    @property
    def stage(self) -> str: ...
    @property
    def chunk(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    @property
    def cache_skips(self) -> int: ...
    @property
    def dit_calls(self) -> int: ...


def progress_name(progress: ProgressLike) -> str:
    """A progress bar's name: its stage, the chunk of a long video, what the step cache skipped."""
    name = PROGRESS_STAGES.get(progress.stage, (progress.stage, None))[0]
    if progress.chunks > 1 and progress.stage in CHUNKED_STAGES:
        name = f"{name} {progress.chunk}/{progress.chunks}"
    if progress.stage == "denoise" and progress.cache_skips:
        name = f"{name}, cache skipped {progress.cache_skips}/{progress.dit_calls}"
    return name
