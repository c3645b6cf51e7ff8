"""Long videos: how a requested length maps onto token segments and stage-2 chunks. Imports no torch.

Stage 1 writes `segments` token segments of `window` semantic frames in one pass. Stage 2 slides a
window of `window` latent frames over those semantic frames, `stride = window - overlap` at a time:
chunk 0 is an ordinary clip (1 + f (window - 1) RGB frames, f the VAE's temporal factor); every later
chunk keeps its first `overlap` latent frames fixed to the last ones of the chunk before and adds
`f * stride` RGB frames. Lengths between two chunk boundaries round up to the next boundary.

The few numbers this needs per model are `LengthRules`, derived from the torch-free model spec
(`engine.specs`) and its token layout, so clients (the CLI's submit, the TUI) check and round a length
with the same rules the engine uses, without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

from engine.models.token_layout import max_segments
from engine.specs import get_spec


@dataclass(frozen=True)
class LengthRules:
    model: str
    window: int  # semantic frames per token segment = latent frames per stage-2 chunk
    time_factor: int  # RGB frames per latent frame after the first (the VAE's temporal compression)
    fps: int
    default_overlap: int
    max_segments: int  # token segments the language model's position budget holds for any prompt


@cache
def rules_for(model: str) -> LengthRules:
    """The length rules of a model spec by name; ValueError naming the known models otherwise."""
    spec = get_spec(model)
    return LengthRules(
        model=spec.name,
        window=spec.llm.frames_per_segment,
        time_factor=spec.vae.temporal_compression,
        fps=spec.fps,
        default_overlap=spec.default_overlap,
        max_segments=max_segments(spec.llm),
    )


@dataclass(frozen=True)
class ChunkPlan:
    window: int  # latent frames per stage-2 chunk = semantic frames per token segment
    overlap: int  # latent frames a chunk shares with the one before
    chunks: int
    time_factor: int  # RGB frames per latent frame after the first
    fps: int
    requested_frames: int | None = None

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    @property
    def clip_frames(self) -> int:
        return 1 + self.time_factor * (self.window - 1)

    @property
    def chunk_frames(self) -> int:
        """RGB frames each chunk after the first adds."""
        return self.time_factor * self.stride

    @property
    def frames(self) -> int:
        return self.frames_after(self.chunks)

    @property
    def latent_frames(self) -> int:
        return self.window + (self.chunks - 1) * self.stride

    @property
    def segments(self) -> int:
        return math.ceil(self.latent_frames / self.window)

    @property
    def semantic_frames(self) -> int:
        return self.segments * self.window

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def frames_after(self, finished_chunks: int) -> int:
        """RGB frames in the video once `finished_chunks` chunks are written."""
        if finished_chunks <= 0:
            return 0
        return self.clip_frames + (finished_chunks - 1) * self.chunk_frames

    def latent_range(self, index: int) -> tuple[int, int]:
        """[start, end) of chunk `index`'s window in the sequence of latent (= semantic) frames."""
        start = index * self.stride
        return start, start + self.window

    def frame_range(self, index: int) -> tuple[int, int]:
        """First and last RGB frame (inclusive) that chunk `index` adds to the video."""
        return self.frames_after(index), self.frames_after(index + 1) - 1

    @property
    def rounded(self) -> bool:
        return self.requested_frames is not None and self.requested_frames != self.frames

    def note(self) -> str | None:
        """What the rounding did, for the CLI and the JSON record; None when nothing was rounded."""
        if not self.rounded:
            return None
        return (
            f"{self.requested_frames} frames rounded up to {self.frames} "
            f"({self.seconds:.1f} s at {self.fps} fps): a video is {self.clip_frames} frames "
            f"plus {self.chunk_frames} per further chunk"
        )

    def record(self) -> dict[str, Any]:
        return {
            "requested_frames": self.requested_frames,
            "frames": self.frames,
            "seconds": self.seconds,
            "chunks": self.chunks,
            "overlap": self.overlap,
            "window": self.window,
            "segments": self.segments,
            "rounded": self.note(),
        }


def allowed_overlaps(rules: LengthRules) -> list[int]:
    # the causal VAE decodes continuation latents two at a time (a lone latent frame would decode as an image)
    return [p for p in range(rules.window) if (rules.window - p) >= 2 and (rules.window - p) % 2 == 0]


def check_overlap(rules: LengthRules, overlap: int | None) -> int:
    overlap = rules.default_overlap if overlap is None else overlap
    allowed = allowed_overlaps(rules)
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap not in allowed:
        raise ValueError(
            f"overlap must leave an even number (>= 2) of new latent frames per {rules.window}-frame chunk; "
            f"choose one of {', '.join(map(str, allowed))}, got {overlap}"
        )
    return overlap


def max_chunks(rules: LengthRules, overlap: int | None = None) -> int:
    """The most chunks the language model's token budget allows, for any prompt."""
    overlap = check_overlap(rules, overlap)
    return 1 + (rules.max_segments * rules.window - rules.window) // (rules.window - overlap)


def limits(rules: LengthRules, overlap: int | None = None) -> dict[str, Any]:
    """The numbers a length field shows: one clip, each further chunk, and the maximum."""
    plan = ChunkPlan(
        window=rules.window,
        overlap=check_overlap(rules, overlap),
        chunks=max_chunks(rules, overlap),
        time_factor=rules.time_factor,
        fps=rules.fps,
    )
    return {
        "fps": rules.fps,
        "overlap": plan.overlap,
        "clip_frames": plan.clip_frames,
        "chunk_frames": plan.chunk_frames,
        "max_frames": plan.frames,
        "max_seconds": plan.seconds,
        "max_chunks": plan.chunks,
    }


def plan_length(rules: LengthRules, frames: int | None = None, overlap: int | None = None) -> ChunkPlan:
    """The chunk plan for `frames` RGB frames (None: one clip), rounded up to a chunk boundary.

    A length beyond what the token budget allows is a ValueError that names the maximum.
    """
    overlap = check_overlap(rules, overlap)
    plan = ChunkPlan(
        window=rules.window,
        overlap=overlap,
        chunks=1,
        time_factor=rules.time_factor,
        fps=rules.fps,
        requested_frames=frames,
    )
    if frames is None:
        return plan
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive number of video frames, got {frames}")
    most = max_chunks(rules, overlap)
    chunks = 1 + max(0, math.ceil((frames - plan.clip_frames) / plan.chunk_frames))
    if chunks > most:
        longest = plan.frames_after(most)
        raise ValueError(
            f"{frames} frames ({frames / rules.fps:.1f} s) is longer than the {rules.model} model can make: "
            f"at most {longest} frames ({longest / rules.fps:.1f} s at {rules.fps} fps, {most} chunks with "
            f"overlap {overlap}), the language model's token budget"
        )
    return ChunkPlan(plan.window, overlap, chunks, plan.time_factor, rules.fps, frames)


def frames_for_seconds(rules: LengthRules, seconds: float) -> int:
    """Seconds -> frames at the model's frame rate, rounded up: a video is never shorter than asked."""
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"seconds must be a number > 0, got {seconds}")
    return math.ceil(seconds * rules.fps - 1e-9)  # 1e-9: 6 s at 8 fps is 48 frames, not 49


def parse_seconds(text: str, rules: LengthRules) -> int:
    """'12.05' (seconds) -> frames, as `frames_for_seconds` rounds them."""
    try:
        seconds = float(text.strip())
    except ValueError:
        raise ValueError(f"seconds must be a number > 0, not {text.strip()!r}") from None
    return frames_for_seconds(rules, seconds)


def parse_length(text: str, rules: LengthRules) -> int | None:
    """A length as people type it, on the command line or in the form: '' -> None (one clip),
    '97' -> 97 frames, '12s' or '12.5 s' -> seconds at the model's frame rate (rounded up)."""
    text = text.strip().lower()
    if not text:
        return None
    if text.endswith("s"):
        return parse_seconds(text[:-1], rules)
    try:
        return int(text)  # its range is the schema's (engine.params), checked by the caller
    except ValueError:
        raise ValueError(f"length must be frames (e.g. 49) or seconds (e.g. 6s), not {text!r}") from None
