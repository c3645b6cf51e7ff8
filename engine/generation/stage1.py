"""Stage 1, kept warm: prompt -> flan-T5 -> semantic tokens -> semantic features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.generation.prompt_tokens import check_token_count
from engine.generation.residency import MovableStage
from engine.generation.text_encoder import FlanT5PromptEncoder, require_prompt
from engine.models.llm import SemanticLM
from engine.models.llm_sampler import Decoding, SamplingParams, sample_codes
from engine.models.semantic_decoder import SemanticDecoder
from engine.models.token_layout import codes_per_video
from engine.specs import ModelSpec
from engine.weights.downloads import refuse_failed
from engine.weights.layout import ReleaseLayout
from engine.weights.loading import load_semantic_decoder, load_semantic_lm


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """The reference runs in bf16 on a GPU; on a CPU float32 is both faster and exact."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class SemanticStage(MovableStage):
    """The three stage-1 models of one spec, loaded once and reused across prompts."""

    spec: ModelSpec
    prompt_encoder: FlanT5PromptEncoder
    lm: SemanticLM
    decoder: SemanticDecoder
    device: torch.device
    compile_decoding: bool = False  # the language model's decoding step through torch.compile

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        layout: ReleaseLayout,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> SemanticStage:
        refuse_failed(layout.root)
        device = device or default_device()
        dtype = dtype or default_dtype(device)
        encoder = FlanT5PromptEncoder.load(
            layout.flan_t5_dir, dtype=dtype, device=device, max_length=spec.llm.max_text_tokens
        )
        lm = load_semantic_lm(layout.llm_file, spec.llm, device=device, dtype=dtype)
        decoder = load_semantic_decoder(layout.tokenizer_file, spec.decoder, device=device, dtype=dtype)
        return cls(spec, encoder, lm, decoder, device)

    def modules(self) -> list[torch.nn.Module]:
        return [self.prompt_encoder.model, self.lm, self.decoder]

    def transient(self) -> list[torch.nn.Module]:
        return self.modules()

    def codes(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        on_token: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_text: Callable[[], None] | None = None,
        on_decoding: Callable[[Decoding], None] | None = None,
    ) -> torch.Tensor:
        """Semantic codes int64 [codes_per_video] for the prompt; on_text() once flan-T5 has run;
        on_decoding: llm_sampler.sample_codes's."""
        params.validate(self.spec.llm)
        ids = self.prompt_encoder.tokenizer.ids(require_prompt(prompt))
        check_token_count(ids, self.spec.llm.max_text_tokens, self.spec.name)  # refused, never cut
        self.ready(self.prompt_encoder.model)
        if self.residency is not None:
            self.residency.prefetch(self.lm)
        with torch.no_grad():
            states = self.prompt_encoder.encode(prompt)
        self.drop(self.prompt_encoder.model)
        self.ready(self.lm)
        if on_text is not None:
            on_text()
        try:
            return sample_codes(
                self.lm,
                states,
                params,
                on_token=on_token,
                should_stop=should_stop,
                on_decoding=on_decoding,
                compiled=self.compile_decoding,
            )
        finally:
            self.drop(self.lm)

    def features(self, codes: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Semantic features [num_frames, C, H, W] (float32 on the CPU), decoded one segment at a time."""
        per_segment = self.spec.llm.frames_per_segment
        count = codes_per_video(self.spec.llm, per_segment)
        if codes.numel() != count * (num_frames // per_segment) or num_frames % per_segment:
            raise ValueError(
                f"{codes.numel()} codes do not make {num_frames} semantic frames "
                f"({count} codes per {per_segment} frames)"
            )
        segments = []
        self.ready(self.decoder)
        with torch.no_grad():
            for chunk in codes.to(self.device).reshape(-1, count):
                segments.append(self.decoder(chunk[None], per_segment)[0].float().cpu())
        return torch.cat(segments)
