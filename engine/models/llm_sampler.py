"""Sampling semantic tokens from `SemanticLM`, step for step as the reference does it.

The token layout per 13-frame segment is START_OF_IFrame, I codes, END_OF_IFrame, then
per P-frame START_OF_PFrame, P codes, END_OF_PFrame; one EOS closes the sequence.
Structural tokens are forced but still consume one multinomial draw each, so a seed
replays the reference's random stream. Codes sampled as special ids are fed back as
themselves and written out clamped to the codebook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from engine.models.configs import LLMConfig
from engine.models.llm import SemanticLM
from engine.models.token_layout import Step, token_layout
from engine.params import by_name, defaults

JOB_DEFAULTS = defaults()


class SamplingCancelled(Exception):
    """The caller's cancellation check asked to stop between two tokens."""


@dataclass(frozen=True)
class SamplingParams:
    """User-facing knobs of stage 1. `cfg` is the LLM guidance scale (off when 0 or 1)."""

    cfg: float = JOB_DEFAULTS["cfg"]
    temperature: float = JOB_DEFAULTS["temperature"]
    top_k: int | None = JOB_DEFAULTS["top_k"]
    top_p: float | None = JOB_DEFAULTS["top_p"]
    motion_score: float = JOB_DEFAULTS["motion_score"]
    num_frames: int = 13
    seed: int = JOB_DEFAULTS["seed"]

    def validate(self, config: LLMConfig) -> None:
        """Raise ValueError naming the parameter and its allowed range (the job schema's, engine.params)."""
        schema = by_name()
        for knob in fields(self):
            if knob.name in schema:
                schema[knob.name].check(getattr(self, knob.name))
        seg = config.frames_per_segment
        if not isinstance(self.num_frames, int) or self.num_frames < seg or self.num_frames % seg:
            raise ValueError(
                f"num_frames must be a positive multiple of {seg} semantic frames "
                f"(one segment = {seg}), got {self.num_frames}"
            )

    @property
    def guidance(self) -> bool:
        return self.cfg > 0 and self.cfg != 1


def next_token_probs(logits: torch.Tensor, step: Step, params: SamplingParams) -> torch.Tensor:
    """Guided float32 logits [1, V] -> the distribution the reference samples from."""
    logits = logits / params.temperature
    if step.allowed is not None:
        mask = torch.full_like(logits, float("-inf"))
        mask[:, list(step.allowed)] = 0
        return torch.softmax(logits + mask, dim=-1)
    if params.top_k is not None:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p is not None:
        probs = nucleus(probs, params.top_p)
    return probs


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest most-probable set whose mass reaches top_p, renormalised."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    reached = torch.cumsum(sorted_probs, dim=-1) >= top_p
    drop_sorted = torch.zeros_like(reached)
    drop_sorted[..., 1:] = reached[..., :-1]  # the token that crosses top_p is kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def guided_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if not params.guidance:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + params.cfg * (cond - uncond)


@torch.no_grad()
def sample_codes(
    model: SemanticLM,
    text_states: torch.Tensor,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    forced_codes: torch.Tensor | None = None,
    use_cache: bool = True,
    on_logits: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Generate the semantic codes of one video: int64 [num_codes], each in 0..codebook_size-1.

    text_states: flan-T5 hidden states [1, L, d] (or [L, d]) of the prompt, padding removed.
    generator: drives every draw; by default a CPU-or-device generator seeded with params.seed.
    on_token(done, total) reports progress after each position; should_stop() is checked
    between positions and raises SamplingCancelled. forced_codes (teacher forcing, for
    tests) replaces each sampled code by the given one; on_logits(step, raw [B, V]) sees
    the raw logits before guidance. use_cache=False recomputes the whole sequence per step.
    """
    config = model.config
    params.validate(config)
    device = model.transformer.head.weight.device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    micro = {"frames": float(params.num_frames), "motion_score": float(params.motion_score)}
    prefix = model.prefix_features(text_states.to(device), micro, params.guidance)
    steps = token_layout(config, params.num_frames)
    batch, prefix_len = prefix.shape[0], prefix.shape[1]
    if prefix_len + len(steps) > config.rope_max_len:
        raise ValueError(
            f"num_frames={params.num_frames} needs {prefix_len + len(steps)} positions, "
            f"more than the model's {config.rope_max_len}"
        )
    cache = model.transformer.new_cache(batch, prefix_len + len(steps)) if use_cache else None
    sequence = prefix
    inputs, positions = prefix, torch.arange(prefix_len, device=device)
    codes: list[int] = []
    for index, step in enumerate(steps):
        if should_stop is not None and should_stop():
            raise SamplingCancelled(f"stopped after {index} of {len(steps)} tokens")
        raw = model.transformer(inputs, positions, cache)
        if on_logits is not None:
            on_logits(index, raw)
        probs = next_token_probs(guided_logits(raw, params), step, params)
        token = int(torch.multinomial(probs, 1, generator=generator).item())
        if step.forced is not None:
            token = step.forced
        else:
            if forced_codes is not None:
                token = int(forced_codes[len(codes)])
            codes.append(token)
        if on_token is not None:
            on_token(index + 1, len(steps))
        new = model.embed_tokens(torch.tensor([token], device=device)).to(prefix.dtype).expand(batch, 1, -1)
        if cache is not None:
            inputs, positions = new, torch.tensor([prefix_len + index], device=device)
        else:
            sequence = torch.cat([sequence, new], dim=1)
            inputs, positions = sequence, torch.arange(sequence.shape[1], device=device)
    return torch.tensor(codes, dtype=torch.long).clamp_(0, config.codebook_size - 1)
