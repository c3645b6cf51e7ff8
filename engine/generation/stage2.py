"""Stage 2, kept warm: semantic tokens + prompt -> latents -> RGB frames."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from engine.generation import latent_preview
from engine.generation.cursor import RenderCursor
from engine.generation.latent_preview import (
    PreviewClock,
    Projection,
    WatchedSampler,
    fit_projection,
)
from engine.generation.lengths import ChunkPlan
from engine.generation.parallel.group import ParallelGroup
from engine.generation.parallel.render import lead_render
from engine.generation.residency import MovableStage, Residency
from engine.generation.speed import DiTOptions, FirstCallTimer, apply_dit_options
from engine.generation.text_encoder import T5v11PromptEncoder
from engine.models.configs import LLMConfig
from engine.models.control_dit import ControlDiT
from engine.models.dpm_sampler import DpmSolverSampler
from engine.models.semantic_decoder import SemanticDecoder
from engine.models.step_cache import CacheCounts, StepCache
from engine.models.token_layout import codes_per_video
from engine.models.video_vae import StreamingDecoder, decode_latents, to_uint8_frames
from engine.specs import ModelSpec
from engine.weights.downloads import refuse_failed
from engine.weights.layout import ReleaseLayout
from engine.weights.loading import load_control_dit, load_diffusion_semantic_decoder, load_vae

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

    from engine.generation.parallel.network import ParallelDiT


@dataclass
class VideoStage(MovableStage):
    """T5 v1.1, the semantic decoder, the control DiT and the VAE of one spec."""

    spec: ModelSpec
    prompt_encoder: T5v11PromptEncoder | None  # None on a helper rank: rank 0 sends the prompt's states
    decoder: SemanticDecoder
    network: ControlDiT
    vae: AutoencoderKLCogVideoX | None  # None on a helper rank: only rank 0 decodes
    device: torch.device
    vae_tiling: bool = False  # spatial tiles: less memory, other pixels (the low profile only)
    first_calls: FirstCallTimer | None = None  # times each shape's first DiT call (the compile)
    parallel: ParallelGroup | None = None  # its ranks render with this one (engine.generation.parallel)
    projection: Projection | None = None  # latents -> rough RGB for live previews, fitted to the VAE once

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        layout: ReleaseLayout,
        device: torch.device,
        dtype: torch.dtype,
    ) -> VideoStage:
        refuse_failed(layout.root)
        encoder = T5v11PromptEncoder.load(
            layout.t5_dir, dtype=dtype, device=device, max_length=spec.text_tokens
        )
        decoder = load_diffusion_semantic_decoder(layout, spec.decoder, device=device, dtype=dtype)
        network = load_control_dit(layout, spec.dit, device=device, dtype=dtype)
        vae = load_vae(layout, spec.vae, device=device, dtype=dtype)
        return cls(spec, encoder, decoder, network, vae, device)

    def modules(self) -> list[torch.nn.Module]:
        text = None if self.prompt_encoder is None else self.prompt_encoder.model
        return [module for module in (text, self.decoder, self.network, self.vae) if module is not None]

    def transient(self) -> list[torch.nn.Module]:
        return [] if self.prompt_encoder is None else [self.prompt_encoder.model]

    def prepare(self, options: DiTOptions, dtype: torch.dtype, vae_tiling: bool = False) -> None:
        """Apply the engine's DiT options (resolved for `self.device`); call before `adopt`."""
        apply_dit_options(self.network, options, self.device, dtype)
        self.vae_tiling = vae_tiling
        self.first_calls = FirstCallTimer(self.device) if options.compile else None

    def adopt(self, residency: Residency, stream_blocks: bool = False, quantize: bool = False) -> None:
        """Hand the models to `residency`; `stream_blocks`: the DiT's blocks come one by one."""
        for module in self.modules():
            if module is self.network and stream_blocks:
                blocks = self.network.blocks()
                residency.adopt(self.network, skip=tuple(blocks))
                residency.stream(blocks, quantize=quantize)
            else:
                residency.adopt(module)
        self.residency = residency

    def compile_seconds(self) -> float | None:
        """Seconds spent in first DiT calls of new shapes so far (compilation plus one call)."""
        return None if self.first_calls is None else self.first_calls.seconds

    def check_codes(self, codes: torch.Tensor, segments: int = 1) -> None:
        """Tokens must be whole segments, at least `segments` of them (a long video needs several)."""
        count = codes_per_video(self.spec.llm, self.spec.llm.frames_per_segment)
        if codes.ndim != 1 or codes.numel() % count or codes.numel() < count * segments:
            raise ValueError(
                f"stage 2 renders whole segments of {count} semantic tokens and this video needs "
                f"{segments} ({count * segments} tokens); got tokens of shape {list(codes.shape)}"
            )
        if int(codes.min()) < 0 or int(codes.max()) >= self.spec.llm.codebook_size:
            raise ValueError(f"semantic tokens must be codes in [0, {self.spec.llm.codebook_size})")

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """T5 v1.1 states for [uncond, cond]; the reference's uncond is zeros."""
        encoder = self.prompt_encoder
        assert encoder is not None, "a helper rank's stage 2 has no T5"
        self.ready(encoder.model)
        try:
            cond = encoder.encode(prompt)
        finally:
            self.drop(encoder.model)
        return torch.cat([torch.zeros_like(cond), cond])

    @torch.no_grad()
    def render_chunks(
        self,
        text: torch.Tensor,
        codes: torch.Tensor,
        plan: ChunkPlan,
        *,
        seed: int,
        steps: int,
        on_step: Callable[[int, int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        cache: float = 0.0,
        counts: CacheCounts | None = None,
        cursor: RenderCursor | None = None,
        on_preview: Callable[[int, int, int, np.ndarray], None] | None = None,
        preview_interval_s: float | None = None,
    ) -> Generator[torch.Tensor, None, None]:
        """Yield each chunk's denoised window of latents [1, window, C, H, W] (float32), chunk by chunk.

        Chunk 0 is an ordinary clip. Chunk j > 0 is sampled over latent frames [j s, j s + window)
        (s = window - overlap), conditioned on the semantic frames of that window, with its first
        `overlap` frames held to the last ones of chunk j - 1 at every step. One generator seeded
        with `seed` draws every chunk's noise in turn. on_step(chunk index, step, steps).

        cache > 0: step caching (engine.models.step_cache), a fresh cache for each chunk (its first
        and last steps always run the blocks), on a parallel group too; 0 calls the network as it is.
        `counts` adds up the DiT calls (two a step, one per CFG branch) and those the cache skipped.

        `cursor`: where to start (a resumed render: its next chunk, generator state and prefix) and where it
        stands after each chunk (moved on before the chunk is yielded); None: from chunk 0, not told.

        `on_preview(chunk index, step, steps, picture)`: live previews (engine.generation.latent_preview),
        at most one a `preview_interval_s` (None: latent_preview.PREVIEW_INTERVAL_S), called just before
        `on_step` of that step: the denoised estimate's last latent frame through the VAE-fitted projection,
        uint8 [H, W, 3] at latent resolution. Only where this rank decodes (it has the VAE); the latents are
        the same with or without.
        """
        self.check_codes(codes, plan.segments)
        self.ready(self.decoder, self.network)
        if self.vae is not None:
            self.ready(self.vae)
        windows = SemanticWindows(self.decoder, codes.to(self.device), self.spec.llm)
        cursor = cursor if cursor is not None else RenderCursor()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if cursor.generator is not None:
            generator.set_state(cursor.generator.cpu())
        shape = (1, *self.spec.latent_shape(plan.window))
        wanted = on_preview is not None and self.vae is not None
        interval = latent_preview.PREVIEW_INTERVAL_S if preview_interval_s is None else preview_interval_s
        previews = PreviewClock(interval) if wanted else None
        sampler = DpmSolverSampler() if previews is None else WatchedSampler()
        projection = None if previews is None else self.preview_projection()
        prefix = None if cursor.prefix is None else cursor.prefix.to(self.device)
        if self.parallel is not None:  # every rank of the group renders these chunks, in step with rank 0
            if self.parallel.rank == 0:
                lead_render(self.parallel, text, codes, plan, seed, steps, cache, cursor)
            should_stop = self.parallel.agreed(should_stop)
        for index in range(cursor.index, plan.chunks):
            semantic = self.network.semantic_conditioner(windows.window(*plan.latent_range(index)))
            model = self.network if not cache else self.step_cache(cache, steps, counts)

            def network(
                latents: torch.Tensor, timesteps: torch.Tensor, semantic=semantic, model=model
            ) -> torch.Tensor:
                if counts is not None and model is self.network:
                    counts.calls += latents.shape[0]
                if self.first_calls is not None:
                    return self.first_calls(model, latents, text, timesteps, semantic)
                return model(latents, text, timesteps, semantic)

            def report(step: int, total: int, index=index) -> None:
                if previews is not None and previews.due(step, total):
                    assert on_preview is not None and projection is not None
                    watched = cast(WatchedSampler, sampler)
                    on_preview(index, step, total, projection.image(watched.latest[0][0, -1]))
                if on_step is not None:
                    on_step(index, step, total)

            noise = torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
            latents = sampler.sample(
                network,
                noise,
                steps,
                generator=generator,
                on_step=report,
                should_stop=should_stop,
                prefix=prefix,
            )
            del semantic, network, model
            if isinstance(sampler, WatchedSampler):
                sampler.latest.clear()
            prefix = latents[:, plan.stride :].clone() if plan.overlap else None
            cursor.index, cursor.generator, cursor.prefix = index + 1, generator.get_state(), prefix
            yield latents

    @torch.no_grad()
    def preview_projection(self) -> Projection:
        """The live previews' latent -> RGB projection, fitted to this stage's VAE on first use (cached)."""
        if self.projection is None:
            vae = self.vae
            assert vae is not None, "a helper rank's stage 2 has no VAE"
            started = time.perf_counter()
            _, channels, height, width = self.spec.latent_shape(self.spec.llm.frames_per_segment)
            self.projection = fit_projection(
                lambda latents: decode_latents(vae, latents, self.spec.vae.scale_factor),
                channels,
                (height, width),
                self.device,
            )
            log.info("live preview projection fitted to the VAE in %.2f s", time.perf_counter() - started)
        return self.projection

    def step_cache(self, threshold: float, steps: int, counts: CacheCounts | None) -> Callable:
        """A fresh step cache for one chunk's sampler run; on a parallel group, over the group's split
        (the ParallelDiT that `attach` made the network's forward)."""
        if self.parallel is not None:
            split = cast("ParallelDiT", self.network.forward)  # attach() made it the group's split call
            return split.step_cache(threshold, steps, counts, self.ready)
        return StepCache(self.network, threshold, steps, counts, self.ready)

    def video_decoder(self) -> StreamingDecoder:
        assert self.vae is not None, "a helper rank's stage 2 has no VAE"
        return StreamingDecoder(self.vae, self.spec.vae.scale_factor, tiled=self.vae_tiling)

    @torch.no_grad()
    def frames(self, decoder: StreamingDecoder, latents: torch.Tensor) -> torch.Tensor:
        """Latents [1, T, C, H, W] that follow those `decoder` has seen -> uint8 frames [F, H, W, 3] (CPU)."""
        return to_uint8_frames(decoder.decode(latents)[0].cpu())


class SemanticWindows:
    """Semantic features of a window of frames, decoding token segments only when a window reaches them
    and forgetting those behind it: memory stays at two segments however long the video is."""

    def __init__(self, decoder: SemanticDecoder, codes: torch.Tensor, config: LLMConfig):
        self.decoder, self.per_segment = decoder, config.frames_per_segment
        self.segments = codes.reshape(-1, codes_per_video(config, self.per_segment))
        self.decoded: dict[int, torch.Tensor] = {}

    def window(self, start: int, end: int) -> torch.Tensor:
        """Features [1, end - start, C, h, w] of semantic frames [start, end)."""
        first, last = start // self.per_segment, (end - 1) // self.per_segment
        for index in [i for i in self.decoded if i < first]:
            del self.decoded[index]
        for index in range(first, last + 1):
            if index not in self.decoded:
                self.decoded[index] = self.decoder(self.segments[index][None], self.per_segment)
        features = torch.cat([self.decoded[i] for i in range(first, last + 1)], dim=1)
        offset = first * self.per_segment
        return features[:, start - offset : end - offset]
