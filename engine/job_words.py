"""How a client words a job's quality record (protocol.QualityRecord, as a dict): the CLI's `show`,
`quality` and `generate --quality`, and the TUI's job page, from one set of lines."""

from __future__ import annotations

from typing import Any


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
