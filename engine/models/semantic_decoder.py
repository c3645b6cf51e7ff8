"""LanDiff's semantic tokenizer, decoding half: code ids -> semantic features per frame.

Codes are looked up in the 16-d VQ codebook and projected to the token size; a TiTok-style
transformer then fills a grid of mask tokens (frames x height x width) by attending to
those latent tokens under a group-causal mask: frame t sees frames <= t, the I-frame
tokens belong to frame 0 and the P-frame tokens of frame k to frame k. Positions are
3-D RoPE; latent token j sits at (j, j, j). Parameter names match
`tokenizer/model.safetensors` of the release (its encoder half is not needed here).

Full size: 30x45 grid, 768 channels out, width 768, 12 layers, 12 heads, token size 768,
13 frames per segment, 330 I-frame and 74 P-frame tokens, codebook 2048 x 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope, rope_angles_to_cis, rotation_frequencies


@dataclass(frozen=True)
class SemanticDecoderConfig:
    """Sizes of the semantic decoder. Defaults are the released model."""

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

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def latent_tokens(self, frames: int) -> int:
        return self.iframe_tokens + (frames - 1) * self.pframe_tokens


def rope_3d(coords: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """cis for (t, h, w) coordinates [n, 3].

    head_dim/8 time pairs, then 3*head_dim/16 pairs each for height and width.
    """
    time_pairs, space_pairs = head_dim // 8, head_dim // 16 * 3
    time = coords[:, :1].float() * rotation_frequencies(time_pairs, theta).to(coords.device)
    height = coords[:, 1:2].float() * rotation_frequencies(space_pairs, theta).to(coords.device)
    width = coords[:, 2:3].float() * rotation_frequencies(space_pairs, theta).to(coords.device)
    return rope_angles_to_cis(torch.cat([time, height, width], dim=-1))


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (as autocast does in the reference), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(width, width, bias=False)
        self.wk = nn.Linear(width, width, bias=False)
        self.wv = nn.Linear(width, width, bias=False)
        self.wo = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cis: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, -1)

        q = apply_rope(heads(self.wq(x)), cis).transpose(1, 2)
        k = apply_rope(heads(self.wk(x)), cis).transpose(1, 2)
        v = heads(self.wv(x)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class DecoderBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNorm32(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm32(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, cis: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cis, mask)
        return x + self.mlp(self.ln_2(x))


class TiTokVideoDecoder(nn.Module):
    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.decoder_embed = nn.Linear(config.token_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.ln_pre = LayerNorm32(width)
        self.transformer = nn.ModuleList(
            DecoderBlock(width, config.num_heads) for _ in range(config.num_layers)
        )
        self.ln_post = LayerNorm32(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, config.feature_channels)
        )

    def groups(self, frames: int, device: torch.device) -> torch.Tensor:
        """Temporal group of each position: grid tokens by frame, I-frame tokens 0, P-frame tokens k."""
        c = self.config
        grid = torch.arange(frames, device=device).repeat_interleave(c.grid_height * c.grid_width)
        iframe = torch.zeros(c.iframe_tokens, dtype=torch.long, device=device)
        pframes = torch.arange(1, frames, device=device).repeat_interleave(c.pframe_tokens)
        return torch.cat([grid, iframe, pframes])

    def attention_mask(self, frames: int, device: torch.device) -> torch.Tensor:
        """Boolean [n, n], True = may attend: a query sees every key of its own or an earlier group."""
        group = self.groups(frames, device)
        return group[None, :] <= group[:, None]

    def positions(self, frames: int, device: torch.device) -> torch.Tensor:
        c = self.config
        t, h, w = torch.meshgrid(
            torch.arange(frames, device=device),
            torch.arange(c.grid_height, device=device),
            torch.arange(c.grid_width, device=device),
            indexing="ij",
        )
        grid = torch.stack([t, h, w], dim=-1).reshape(-1, 3)
        latent = torch.arange(c.latent_tokens(frames), device=device)[:, None].expand(-1, 3)
        return torch.cat([grid, latent])

    def forward(self, latents: torch.Tensor, frames: int) -> torch.Tensor:
        """latents [B, N, token_size] -> features [B, frames, C, H, W]."""
        c = self.config
        batch = latents.shape[0]
        grid_len = frames * c.grid_height * c.grid_width
        x = self.decoder_embed(latents)
        x = torch.cat([self.mask_token.to(x.dtype).expand(batch, grid_len, -1), x], dim=1)
        x = self.ln_pre(x)
        cis = rope_3d(self.positions(frames, x.device), c.head_dim, c.rope_theta)
        mask = self.attention_mask(frames, x.device)
        for block in self.transformer:
            x = block(x, cis, mask)
        x = self.ffn(self.ln_post(x[:, :grid_len]))
        x = x.view(batch, frames, c.grid_height, c.grid_width, c.feature_channels)
        return x.permute(0, 1, 4, 2, 3)


class Codebook(nn.Module):
    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(1, config.codebook_size, config.codebook_dim))


class Quantizer(nn.Module):
    """The lookup half of the VQ: code id -> project_out(codebook[id])."""

    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self._codebook = Codebook(config)
        self.project_out = nn.Linear(config.codebook_dim, config.token_size)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(self._codebook.embed[0][codes])


class SemanticDecoder(nn.Module):
    """Codes of whole segments -> semantic features."""

    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self.config = config
        self.quantizer = Quantizer(config)
        self.decoder = TiTokVideoDecoder(config)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, N] code ids -> [B, N, token_size]."""
        if (
            codes.dtype.is_floating_point
            or int(codes.min()) < 0
            or int(codes.max()) >= self.config.codebook_size
        ):
            raise ValueError(f"codes must be integers in [0, {self.config.codebook_size})")
        return self.quantizer(codes)

    def forward(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        """codes [B, N] with N = I + (frames - 1) * P -> features [B, frames, C, H, W]."""
        expected = self.config.latent_tokens(frames) if frames >= 1 else None
        if codes.ndim != 2 or codes.shape[1] != expected:
            raise ValueError(
                f"{frames} frames take {expected} codes per video "
                f"({self.config.iframe_tokens} + ({frames} - 1) x {self.config.pframe_tokens}), "
                f"got codes of shape {list(codes.shape)}"
            )
        return self.decoder(self.codes_to_latents(codes), frames)
