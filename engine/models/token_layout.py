"""The semantic-token layout of stage 1: which positions the language model writes, torch-free.

Per segment: START_OF_IFrame, I codes, END_OF_IFrame, then per P-frame START_OF_PFrame, P codes,
END_OF_PFrame; one EOS slot closes each segment. Length rules derive the token budget from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.configs import LLMConfig, Vocab


@dataclass(frozen=True)
class Step:
    """One generated position: the ids its softmax may pick (None = all) and the id forced after it."""

    allowed: tuple[int, ...] | None = None
    forced: int | None = None

    @property
    def is_code(self) -> bool:
        return self.forced is None


def token_layout(config: LLMConfig, num_frames: int) -> list[Step]:
    """The generated positions after the prefix's START_OF_IFrame, in order."""
    vocab: Vocab = config.vocab
    segments = num_frames // config.frames_per_segment
    code = Step()
    steps: list[Step] = []
    for segment in range(segments):
        later = segment > 0  # the reference lets EOS compete only inside later segments
        if later:
            steps.append(Step((vocab.start_of_iframe,), vocab.start_of_iframe))
        steps += [code] * config.iframe_tokens
        steps.append(Step(None, vocab.end_of_iframe))
        for _ in range(config.frames_per_segment - 1):
            allowed = (vocab.start_of_pframe, vocab.eos) if later else (vocab.start_of_pframe,)
            steps.append(Step(allowed, vocab.start_of_pframe))
            steps += [code] * config.pframe_tokens
            steps.append(Step(None, vocab.end_of_pframe))
    # An EOS slot follows each segment; it is a masked choice only when a later segment precedes it.
    steps.append(Step((vocab.eos,) if segments > 1 else None, vocab.eos))
    return steps


def codes_per_video(config: LLMConfig, num_frames: int) -> int:
    return sum(step.is_code for step in token_layout(config, num_frames))


def max_segments(config: LLMConfig) -> int:
    """The most token segments one pass can write for any prompt: the prefix (BOS, two micro-conditions,
    up to max_text_tokens text states, START_OF_IFrame) plus the generated positions fit in the RoPE table."""
    per_segment = config.frames_per_segment
    first = len(token_layout(config, per_segment))
    each_more = len(token_layout(config, 2 * per_segment)) - first
    room = config.rope_max_len - (config.max_text_tokens + 4) - first
    if room < 0:
        return 0
    return 1 + room // each_more
