"""Stage 2, kept warm: semantic tokens + prompt -> latents -> RGB frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .downloads import refuse_failed
from .model_loading import load_control_dit, load_diffusion_semantic_decoder, load_vae
from .models.control_dit import ControlDiT
from .models.dpm_sampler import DpmSolverSampler
from .models.llm_sampler import codes_per_video
from .models.semantic_decoder import SemanticDecoder
from .models.video_vae import decode_latents, to_uint8_frames
from .residency import MovableStage
from .specs import ModelSpec
from .text_encoder import T5v11PromptEncoder
from .weights import ReleaseLayout


@dataclass
class VideoStage(MovableStage):
    """T5 v1.1, the semantic decoder, the control DiT and the VAE of one spec."""

    spec: ModelSpec
    prompt_encoder: T5v11PromptEncoder
    decoder: SemanticDecoder
    network: ControlDiT
    vae: torch.nn.Module
    device: torch.device

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
        return [self.prompt_encoder.model, self.decoder, self.network, self.vae]

    def check_codes(self, codes: torch.Tensor) -> None:
        count = codes_per_video(self.spec.llm, self.spec.llm.frames_per_segment)
        if codes.ndim != 1 or codes.numel() != count:
            raise ValueError(
                f"stage 2 renders one segment of {count} semantic tokens, "
                f"got tokens of shape {list(codes.shape)}"
            )
        if int(codes.min()) < 0 or int(codes.max()) >= self.spec.llm.codebook_size:
            raise ValueError(f"semantic tokens must be codes in [0, {self.spec.llm.codebook_size})")

    @torch.no_grad()
    def latents(
        self,
        prompt: str,
        codes: torch.Tensor,
        *,
        seed: int,
        steps: int,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Denoised latents [1, T, C, H, W] (float32) for one segment of semantic tokens."""
        self.check_codes(codes)
        frames = self.spec.llm.frames_per_segment
        features = self.decoder(codes.to(self.device)[None], frames)
        semantic = self.network.semantic_conditioner(features)  # computed once for every step
        cond = self.prompt_encoder.encode(prompt)
        text = torch.cat([torch.zeros_like(cond), cond])  # [uncond, cond]; the reference's uncond is zeros

        def network(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            return self.network(latents, text, timesteps, semantic)

        generator = torch.Generator(device=self.device).manual_seed(seed)
        shape = (1, *self.spec.latent_shape(frames))
        noise = torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
        sampler = DpmSolverSampler()
        return sampler.sample(
            network, noise, steps, generator=generator, on_step=on_step, should_stop=should_stop
        )

    @torch.no_grad()
    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [1, T, C, H, W] -> uint8 frames [F, H, W, 3] on the CPU."""
        video = decode_latents(self.vae, latents, self.spec.vae.scale_factor)
        return to_uint8_frames(video[0].cpu())
