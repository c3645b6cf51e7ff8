"""How the CLI words a job's figures: its length and its quality record (for `generate`, `submit`,
`show` and `quality`)."""

from __future__ import annotations

from typing import Any


def describe_length(plan) -> str:
    chunks = "1 chunk"
    if plan.chunks > 1:
        chunks = f"{plan.chunks} chunks of {plan.window} latent frames, overlap {plan.overlap}"
    return f"{plan.frames} frames ({plan.seconds:.1f} s at {plan.fps} fps) in {chunks}"


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
