"""LanDiff stage 2 network: CogVideoX-2b's transformer with LanDiff's control branch.

The main transformer and the control branch are built from diffusers' CogVideoX pieces
(patch embedding, timestep embedding, `CogVideoXBlock`, the adaptive output norm). What
is LanDiff's own lives here: the semantic conditioner (a VQGAN-style 2x pixel-shuffle
upsampler and a 3x3 conv from semantic features to a latent-shaped condition), and the
control branch's chaining: the branch sees `x + semantic`, every control block's output
goes through its zero-linear, feeds the next control block, and is added to the main
stream after main blocks 0..n-1, text tokens included.

Layouts: latents are [B, T, C, H, W]; text states [B, L, text_dim]; timesteps [B] are the
DDPM timesteps (999 ... 0) as floats.

Speed knobs, all off by default (the default is diffusers' own attention processor, the exact path):
`set_attention` swaps the attention kernel, `fuse_qkv` joins the q/k/v projections into one GEMM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import (
    CogVideoXPatchEmbed,
    TimestepEmbedding,
    Timesteps,
    get_3d_sincos_pos_embed,
)
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from engine.models.configs import DiTConfig


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class PixelShuffleUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels // 4, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_shuffle(x, 2))


class UpsamplerLevel(nn.Module):
    def __init__(self, blocks: list[ResnetBlock], upsample: bool, channels: int):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if upsample:
            self.upsample = PixelShuffleUpsample(channels)


class Middle(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)


class SemanticUpsampler(nn.Module):
    """Two resolution levels (channel multipliers 1/4 and 1): features [N, C, h, w] -> [N, out, 2h, 2w]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        wide, narrow = config.upsampler_channels, config.upsampler_channels // 4
        blocks = config.upsampler_res_blocks + 1
        self.conv_in = nn.Conv2d(config.semantic_channels, wide, 3, padding=1)
        self.mid = Middle(wide)
        high = UpsamplerLevel([ResnetBlock(wide, wide) for _ in range(blocks)], upsample=True, channels=wide)
        low_blocks = [ResnetBlock(wide, narrow)] + [ResnetBlock(narrow, narrow) for _ in range(blocks - 1)]
        low = UpsamplerLevel(low_blocks, upsample=False, channels=narrow)
        self.up = nn.ModuleList([low, high])  # index = resolution level; run from high to low
        self.norm_out = group_norm(narrow)
        self.conv_out = nn.Conv2d(narrow, config.upsampler_out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(x)))
        for level in reversed(cast("Sequence[UpsamplerLevel]", self.up)):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class SemanticConditioner(nn.Module):
    """Semantic features [B, T, C, h, w] -> a latent-shaped condition [B, T, latent_channels, 2h, 2w]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.upsample_model = SemanticUpsampler(config)
        self.conv_out = nn.Conv2d(config.upsampler_out_channels, config.latent_channels, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, frames = features.shape[:2]
        x = self.conv_out(self.upsample_model(features.flatten(0, 1)))
        return x.unflatten(0, (batch, frames))


class Backbone(nn.Module):
    """Embeddings and a stack of CogVideoX blocks, shared by the main transformer and the control branch."""

    def __init__(self, config: DiTConfig, num_layers: int):
        super().__init__()
        self.config = config
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=config.patch_size,
            in_channels=config.latent_channels,
            embed_dim=config.hidden_size,
            text_embed_dim=config.text_dim,
            use_positional_embeddings=False,
            use_learned_positional_embeddings=False,
        )
        self.time_proj = Timesteps(config.hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(config.hidden_size, config.time_embed_dim, "silu")
        self.transformer_blocks = nn.ModuleList(
            CogVideoXBlock(
                dim=config.hidden_size,
                num_attention_heads=config.num_heads,
                attention_head_dim=config.head_dim,
                time_embed_dim=config.time_embed_dim,
                attention_bias=True,
                norm_eps=1e-5,
            )
            for _ in range(num_layers)
        )
        self._positions: dict[tuple, torch.Tensor] = {}

    def positions(self, frames: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """Fixed 3-D sin-cos embedding of the video tokens, [1, frames*h*w, hidden], cached per shape."""
        key = (frames, height, width, like.device, like.dtype)
        if key not in self._positions:
            c = self.config
            table = get_3d_sincos_pos_embed(
                c.hidden_size,
                (width, height),
                frames,
                spatial_interpolation_scale=c.spatial_interpolation,
                temporal_interpolation_scale=c.temporal_interpolation,
                device=like.device,
                output_type="pt",
            )
            self._positions = {key: table.reshape(1, -1, c.hidden_size).to(like.dtype)}
        return self._positions[key]

    def embed(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (video tokens [B, T*h*w, D], text tokens [B, L, D], time embedding [B, time_embed_dim])."""
        dtype = self.patch_embed.proj.weight.dtype
        temb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        tokens = self.patch_embed(text.to(dtype), latents.to(dtype))
        length = text.shape[1]
        frames, _, height, width = latents.shape[1:]
        p = self.config.patch_size
        video = tokens[:, length:] + self.positions(frames, height // p, width // p, tokens)
        return video, tokens[:, :length], temb


# attend(q, k, v) with q, k, v [B, heads, N, head_dim] -> [B, heads, N, head_dim], no mask, not causal
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


class JointAttentionProcessor:
    """CogVideoX's joint text+video self-attention with a chosen kernel and optionally fused q/k/v.

    The same operations in the same order as diffusers' `CogVideoXAttnProcessor2_0` (without the RoPE
    and mask CogVideoX-2b never uses), so with `sdpa` and unfused projections it gives the same bits.
    """

    def __init__(self, attend: Attend = sdpa):
        self.attend = attend

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None or image_rotary_emb is not None:
            raise ValueError("CogVideoX-2b's attention takes neither a mask nor rotary embeddings")
        length = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = x.shape[0]
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = self.attend(q, k, v).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        words, video = out.split([length, out.size(1) - length], dim=1)
        return video, words


@dataclass
class Streams:
    """The two token streams as the blocks take them: video tokens [B, T*h*w, D] (positions added),
    text tokens [B, L, D] and the time embedding [B, time_embed_dim], of the main transformer and of the
    control branch. Tokens are independent outside attention, so the video tokens may be split."""

    video: torch.Tensor
    words: torch.Tensor
    temb: torch.Tensor
    control_video: torch.Tensor
    control_words: torch.Tensor
    control_temb: torch.Tensor


class ControlDiT(nn.Module):
    """v-prediction of the main CogVideoX transformer steered by the control branch."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.main = Backbone(config, config.num_layers)
        self.norm_final = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.norm_out = AdaLayerNorm(
            config.time_embed_dim,
            output_dim=2 * config.hidden_size,
            norm_elementwise_affine=True,
            chunk_dim=1,
        )
        self.norm_out.norm.eps = 1e-6  # SAT's final norm; diffusers builds it with the block eps
        patch_area = config.patch_size**2
        self.proj_out = nn.Linear(config.hidden_size, patch_area * config.latent_channels)
        self.control = Backbone(config, config.control_layers)
        self.zero_linears = nn.ModuleList(
            nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            for _ in range(config.control_layers)
        )
        self.semantic_conditioner = SemanticConditioner(config)

    def blocks(self) -> list[nn.Module]:
        """Every transformer block in the order `forward` runs them (control k, then main k)."""
        control, main = list(self.control.transformer_blocks), list(self.main.transformer_blocks)
        paired = [block for pair in zip(control, main, strict=False) for block in pair]
        return paired + main[len(control) :]

    def set_attention(self, attend: Attend | None) -> None:
        """Use `attend` as every block's attention kernel; None restores diffusers' own processor."""
        # set_processor takes any processor, though diffusers annotates it with AttnProcessor alone
        for block in cast("list[CogVideoXBlock]", self.blocks()):
            if attend is None and not getattr(block.attn1, "fused_projections", False):
                block.attn1.set_processor(CogVideoXAttnProcessor2_0())
            else:
                block.attn1.set_processor(JointAttentionProcessor(attend or sdpa))

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """One [3D, D] projection per block instead of three (diffusers' `fuse_projections`); the
        separate matrices are dropped so the weights are not held twice."""
        for block in cast("list[CogVideoXBlock]", self.blocks()):
            attn = block.attn1
            if getattr(attn, "fused_projections", False):
                continue
            previous = attn.processor
            attn.fuse_projections()
            del attn.to_q, attn.to_k, attn.to_v
            kernel = previous.attend if isinstance(previous, JointAttentionProcessor) else sdpa
            attn.set_processor(JointAttentionProcessor(kernel))  # see set_attention

    def _control_input(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = self.control.patch_embed.proj.weight.dtype  # the reference adds in the model dtype
        return self.control.embed(latents.to(dtype) + semantic.to(dtype), text, timesteps)

    def _control_step(
        self, index: int, video: torch.Tensor, words: torch.Tensor, temb: torch.Tensor
    ) -> torch.Tensor:
        """Control block `index` then its zero-linear: the projected sequence [B, L + T*h*w, D]."""
        block = self.control.transformer_blocks[index]
        video, words = block(hidden_states=video, encoder_hidden_states=words, temb=temb)
        return self.zero_linears[index](torch.cat([words, video], dim=1))

    def control_outputs(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per control layer, the projected full sequence [B, L + T*h*w, D] ([text | video]), all at once
        (for inspection; `forward` interleaves them with the main blocks)."""
        video, words, temb = self._control_input(latents, text, timesteps, semantic)
        length = words.shape[1]
        outputs = []
        for index in range(len(self.control.transformer_blocks)):
            projected = self._control_step(index, video, words, temb)
            outputs.append(projected)
            words, video = projected[:, :length], projected[:, length:]
        return outputs

    def embed(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> Streams:
        """Both streams' tokens before the first block (see `Streams`)."""
        c_video, c_words, c_temb = self._control_input(latents, text, timesteps, semantic)
        video, words, temb = self.main.embed(latents, text, timesteps)
        return Streams(video, words, temb, c_video, c_words, c_temb)

    def run_blocks(self, streams: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block over `streams` -> the main stream's (video, text) tokens after the last block.

        Control block k runs just before main block k, so only one control output is alive at a time;
        the control stream never reads the main one, so this is the same arithmetic as running the
        whole branch first. Attention is the only place a token sees the others."""
        video, words, temb = streams.video, streams.words, streams.temb
        c_video, c_words, c_temb = streams.control_video, streams.control_words, streams.control_temb
        length = words.shape[1]
        controls = len(self.control.transformer_blocks)
        for index, block in enumerate(self.main.transformer_blocks):
            control = self._control_step(index, c_video, c_words, c_temb) if index < controls else None
            video, words = block(hidden_states=video, encoder_hidden_states=words, temb=temb)
            if control is not None:
                c_words, c_video = control[:, :length], control[:, length:]
                words = words + c_words
                video = video + c_video
                del control
        return video, words

    def head(self, video: torch.Tensor, temb: torch.Tensor, latents_shape: torch.Size) -> torch.Tensor:
        """Video tokens after the blocks [B, T*h*w, D] -> v-prediction shaped as the latents."""
        video = self.proj_out(self.norm_out(self.norm_final(video), temb=temb))
        batch, frames, _, height, width = latents_shape
        p = self.config.patch_size
        out = video.reshape(batch, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def forward(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor, semantic: torch.Tensor
    ) -> torch.Tensor:
        """latents [B, T, C, H, W], text [B, L, text_dim], timesteps [B], semantic [1 or B, T, C, H, W]."""
        streams = self.embed(latents, text, timesteps, semantic)
        video, _ = self.run_blocks(streams)
        return self.head(video, streams.temb, latents.shape)
