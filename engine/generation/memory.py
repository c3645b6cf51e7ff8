"""Memory profiles: which models are on the GPU when, and what a profile may trade for memory.

- `resident`: every model on the device, loaded once.
- `balanced`: the diffusion side (DiT, VAE, semantic decoders) stays; the two T5 encoders and the language
  model come in for their stage from pinned host copies and leave after it (leaving drops the GPU copy, no
  copy back), the next one fetched on a side stream while the current one computes. Same numbers as resident.
- `low`: like balanced without overlapping the big fetches, the DiT's transformer blocks streamed to the
  GPU one after another (held on the host in 8-bit, dequantised on arrival) and the VAE decoded in spatial
  tiles. Both change pixels; the sidecar records them.
- `auto`: by free GPU memory; the choice and why are logged and recorded. Without a GPU, auto is resident.
- `offload`: the old name of balanced, still accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

PROFILES = ("resident", "balanced", "low")
ALIASES = {"offload": "balanced"}
MEMORY_PROFILES = ("auto", *PROFILES, *ALIASES)
GiB = 2**30
# Room for activations beyond the weights (attention workspaces, the VAE's decode of a chunk, the LLM's KV
# cache): a margin chosen for auto's decision, not a measured figure.
ACTIVATION_MARGIN = 8 * GiB


@dataclass(frozen=True)
class WeightSizes:
    """Bytes of the weights a profile keeps on the GPU at its fullest moment."""

    total: int  # every model (resident)
    balanced_peak: int  # the diffusion side, plus the largest encoder and the language model (the prefetch)


@dataclass(frozen=True)
class MemoryChoice:
    profile: str  # resident, balanced or low
    asked: str
    reason: str

    @property
    def streams_blocks(self) -> bool:
        return self.profile == "low"

    @property
    def weights_8bit(self) -> bool:
        return self.profile == "low"

    @property
    def vae_tiling(self) -> bool:
        return self.profile == "low"

    @property
    def prefetch(self) -> bool:
        return self.profile == "balanced"

    def record(self) -> dict:
        return {
            "profile": self.profile,
            "asked": self.asked,
            "reason": self.reason,
            "dit_blocks_streamed": self.streams_blocks,
            "dit_weights_8bit": self.weights_8bit,
            "vae_spatial_tiling": self.vae_tiling,
        }


def resolve_memory_profile(
    profile: str,
    device: torch.device,
    sizes: WeightSizes | None = None,
    free_bytes: int | None = None,
) -> MemoryChoice:
    """The profile to run; `auto` compares the device's free memory with `sizes` (plus a margin)."""
    if profile not in MEMORY_PROFILES:
        raise ValueError(f"memory profile must be one of {', '.join(MEMORY_PROFILES)}, got {profile!r}")
    if profile in ALIASES:
        chosen = ALIASES[profile]
        return MemoryChoice(chosen, profile, f"{profile} is the former name of {chosen}")
    if profile != "auto":
        return MemoryChoice(profile, profile, "asked for")
    if device.type != "cuda":
        return MemoryChoice("resident", profile, f"auto on {device}: no GPU memory to save")
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    if sizes is None:
        return MemoryChoice("low", profile, "auto without the models' sizes: the smallest profile")
    free = f"{free_bytes / GiB:.1f} GiB free on {device}"
    if free_bytes >= sizes.total + ACTIVATION_MARGIN:
        chosen = "resident"
    elif free_bytes >= sizes.balanced_peak + ACTIVATION_MARGIN:
        chosen = "balanced"
    else:
        chosen = "low"
    needs = {"resident": sizes.total, "balanced": sizes.balanced_peak}.get(chosen)
    why = f"{free}, {chosen} needs about {needs / GiB:.1f} GiB of weights" if needs else free
    return MemoryChoice(
        chosen, profile, f"auto picked {chosen}: {why} + {ACTIVATION_MARGIN // GiB} GiB margin"
    )


def spec_weight_sizes(spec, dtype: torch.dtype) -> WeightSizes:
    """Parameter bytes of a spec's models, counted on the meta device (nothing is allocated)."""
    from transformers import T5Config, T5EncoderModel

    from engine.models.control_dit import ControlDiT
    from engine.models.llm import SemanticLM
    from engine.models.semantic_decoder import SemanticDecoder
    from engine.models.video_vae import build_vae

    width = torch.empty((), dtype=dtype).element_size()

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters()) * width

    def t5(sizes) -> int:
        config = T5Config(**vars(sizes), feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        return count(T5EncoderModel(config))

    with torch.device("meta"):
        flan, text = t5(spec.flan_t5), t5(spec.t5)
        lm = count(SemanticLM(spec.llm))
        decoder = count(SemanticDecoder(spec.decoder))
        diffusion = count(ControlDiT(spec.dit)) + count(build_vae(spec.vae)) + decoder
    return WeightSizes(
        total=flan + text + lm + decoder + diffusion, balanced_peak=diffusion + max(flan, text) + lm
    )
