"""Model specs: one object per size, `landiff` (the release) and `tiny` (toy sizes, same architecture)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.configs import DiTConfig, LLMConfig, SemanticDecoderConfig, VAEConfig
from engine.wire import MODEL_FPS


@dataclass(frozen=True)
class T5Sizes:
    """Geometry of a T5 encoder; tiny folders are written from it."""

    d_model: int
    d_ff: int
    num_layers: int
    num_heads: int
    d_kv: int
    vocab_size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    llm: LLMConfig
    decoder: SemanticDecoderConfig
    flan_t5: T5Sizes
    dit: DiTConfig
    vae: VAEConfig
    t5: T5Sizes  # the diffusion side's T5 v1.1 encoder
    text_tokens: int = 226  # the diffusion side's fixed prompt length
    fps: int = MODEL_FPS
    # latent frames a long video's chunk shares with the one before: 7 of 13 is the value the reference's
    # config names (`fixed_frames: 7`); tiny's 3-frame window takes 1, so each chunk still adds 2
    default_overlap: int = 7
    # random weights in the release's layout, made on this machine (no download): the tiny model's
    random_weights: bool = False
    # where its files live under the weights root: the release directly, other specs in a folder of their own
    weights_folder: str = ""

    def latent_shape(self, semantic_frames: int) -> tuple[int, int, int, int]:
        """[T, C, H, W] of one video's latents: one latent frame per semantic frame, twice its grid."""
        d = self.decoder
        return (semantic_frames, self.dit.latent_channels, 2 * d.grid_height, 2 * d.grid_width)

    def video_frames(self, semantic_frames: int) -> int:
        """RGB frames the VAE makes of `semantic_frames` latent frames: 1 + 4 (T - 1) per segment."""
        per_segment = self.llm.frames_per_segment
        factor = self.vae.temporal_compression
        return (semantic_frames // per_segment) * (1 + factor * (per_segment - 1))


LANDIFF = ModelSpec(
    name="landiff",
    llm=LLMConfig(),
    decoder=SemanticDecoderConfig(),
    flan_t5=T5Sizes(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128),
    dit=DiTConfig(),
    vae=VAEConfig(),
    t5=T5Sizes(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128),
)

TINY = ModelSpec(
    name="tiny",
    random_weights=True,
    weights_folder="tiny",
    llm=LLMConfig(
        hidden_dim=64,
        num_heads=4,
        mlp_dim=128,
        num_blocks=2,
        rope_max_len=4096,
        codebook_size=64,
        iframe_tokens=5,
        pframe_tokens=3,
        frames_per_segment=3,
        micro_frequency_dim=32,
        micro_hidden_dim=32,
        text_dim=32,
        max_text_tokens=64,
    ),
    decoder=SemanticDecoderConfig(
        grid_height=4,
        grid_width=6,
        feature_channels=16,
        width=32,
        num_layers=2,
        num_heads=2,
        token_size=16,
        frames_per_segment=3,
        iframe_tokens=5,
        pframe_tokens=3,
        codebook_size=64,
        codebook_dim=8,
    ),
    flan_t5=T5Sizes(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=128),
    dit=DiTConfig(
        hidden_size=64,
        num_heads=4,
        num_layers=2,
        control_layers=1,
        time_embed_dim=32,
        text_dim=32,
        semantic_channels=16,
        upsampler_channels=128,
        upsampler_res_blocks=1,
        upsampler_out_channels=8,
    ),
    vae=VAEConfig(base_channels=32, res_blocks=1),
    t5=T5Sizes(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=128),
    text_tokens=16,
    default_overlap=1,
)

SPECS = {spec.name: spec for spec in (LANDIFF, TINY)}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(SPECS)}") from None
