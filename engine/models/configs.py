"""Sizes of every model, as plain dataclasses: torch-free, so that specs, length rules and clients use them
without loading torch. The defaults are the released models; `engine.specs` names the sizes in use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MICRO_CONDITION_KEYS = ("frames", "motion_score")  # sorted: the order of the two prefix tokens


@dataclass(frozen=True)
class LLMConfig:
    """Sizes of the semantic-token language model. Defaults are the released model."""

    hidden_dim: int = 2048
    num_heads: int = 16
    mlp_dim: int = 11008
    num_blocks: int = 24
    rope_theta: float = 10000.0
    rope_max_len: int = 32768
    codebook_size: int = 2048
    iframe_tokens: int = 330
    pframe_tokens: int = 74
    frames_per_segment: int = 13
    micro_frequency_dim: int = 256
    micro_hidden_dim: int = 512
    text_dim: int = 4096  # d_model of the flan-T5 encoder
    max_text_tokens: int = 512

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.codebook_size)


@dataclass(frozen=True)
class Vocab:
    """Codes 0..codebook_size-1, then seven special ids in the reference's order."""

    codebook_size: int

    @property
    def eos(self) -> int:
        return self.codebook_size

    @property
    def bos(self) -> int:
        return self.codebook_size + 1

    @property
    def start_of_iframe(self) -> int:
        return self.codebook_size + 2

    @property
    def end_of_iframe(self) -> int:
        return self.codebook_size + 3

    @property
    def start_of_pframe(self) -> int:
        return self.codebook_size + 4

    @property
    def end_of_pframe(self) -> int:
        return self.codebook_size + 5

    @property
    def pad(self) -> int:
        return self.codebook_size + 6

    @property
    def size(self) -> int:
        return self.codebook_size + 7


@dataclass(frozen=True)
class SemanticDecoderConfig:
    """Sizes of the semantic decoder. The defaults are the released model."""

    grid_height: int = 30
    grid_width: int = 45
    feature_channels: int = 768
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    token_size: int = 768
    frames_per_segment: int = 13
    iframe_tokens: int = 330
    pframe_tokens: int = 74
    codebook_size: int = 2048
    codebook_dim: int = 16
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        sizes = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "rope_theta"}
        not_positive = [name for name, value in sizes.items() if value < 1]
        if not_positive:
            raise ValueError(f"sizes must be positive: {', '.join(not_positive)}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 16:
            raise ValueError(
                f"head dim {self.head_dim} must be a multiple of 16 for the 3-D RoPE split "
                "(1/4 of it for time, 3/8 each for height and width)"
            )

    @classmethod
    def from_reference_knobs(cls, knobs: Mapping[str, Any]) -> SemanticDecoderConfig:
        """Sizes named as the reference's `build_tokenizer` names them.

        `mean_std_dim` only sizes buffers the reference never applies and is ignored;
        `rope_dim`, when given, must be the head dim (the reference rotates whole heads).
        """
        image_size = knobs["image_size"]
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        patch = int(knobs.get("patch_size", 1))
        frames = int(knobs["temporal_size"])
        pframe_tokens = int(knobs["PFrame_tokens"])
        if "Iframe_tokens" in knobs:
            iframe_tokens = int(knobs["Iframe_tokens"])
        else:
            iframe_tokens = int(knobs["num_latent_tokens"]) - (frames - 1) * pframe_tokens
        config = cls(
            grid_height=int(height) // patch,
            grid_width=int(width) // patch,
            feature_channels=int(knobs["image_channels"]),
            width=int(knobs["width"]),
            num_layers=int(knobs["num_layers"]),
            num_heads=int(knobs["num_heads"]),
            token_size=int(knobs["token_size"]),
            frames_per_segment=frames,
            iframe_tokens=iframe_tokens,
            pframe_tokens=pframe_tokens,
            codebook_size=int(knobs["codebook_size"]),
            codebook_dim=int(knobs["codebook_dim"]),
            rope_theta=float(knobs.get("rope_theta", 10000.0)),
        )
        rope_dim = knobs.get("rope_dim")
        if rope_dim is not None and int(rope_dim) != config.head_dim:
            raise ValueError(f"rope_dim {rope_dim} != head dim {config.head_dim} (width / num_heads)")
        return config

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_height * self.grid_width

    def latent_tokens(self, num_frames: int) -> int:
        """Codes per video of `num_frames` frames: the I-frame group, then one P-frame group per frame."""
        return self.iframe_tokens + (num_frames - 1) * self.pframe_tokens

    def sequence_length(self, num_frames: int) -> int:
        return num_frames * self.tokens_per_frame + self.latent_tokens(num_frames)


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of the stage-2 network. Defaults are CogVideoX-2b with LanDiff's 15-layer control branch."""

    hidden_size: int = 1920
    num_heads: int = 30
    num_layers: int = 30
    control_layers: int = 15
    time_embed_dim: int = 512
    text_dim: int = 4096
    latent_channels: int = 16
    patch_size: int = 2
    spatial_interpolation: float = 1.875
    temporal_interpolation: float = 1.0
    # semantic conditioner
    semantic_channels: int = 768
    upsampler_channels: int = 512
    upsampler_res_blocks: int = 4
    upsampler_out_channels: int = 64

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


SCALE_FACTOR = 1.15258426


@dataclass(frozen=True)
class VAEConfig:
    """Defaults are the release: channels 128 x (1, 2, 2, 4), 3 resnets per level, 16 latent channels."""

    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    res_blocks: int = 3
    latent_channels: int = 16
    scale_factor: float = SCALE_FACTOR
    temporal_compression: int = 4  # RGB frames per latent frame after the first

    @property
    def levels(self) -> int:
        return len(self.channel_multipliers)
