"""LanDiff's semantic tokenizer, decoding half: code ids -> semantic features per frame.

Code ids are looked up in the VQ codebook and projected to the token size (`quantizer.*`).
A TiTok-style transformer (`decoder.*`) then fills a grid of identical mask tokens
(frames x height x width) by attending to those latent tokens. Every token belongs to a
temporal group: grid tokens of frame t to group t, the I-frame latent tokens to group 0 and
the P-frame latent tokens of frame k to group k. A query may attend a key iff the key's group
is not later than its own. Positions are 3-D RoPE only (no learned position embeddings):
grid token (t, h, w) at (t, h, w), latent token j at (j, j, j).

Parameter names are those of the release's `tokenizer/model.safetensors`; its encoder half,
the quantizer's input projection and training state, and the `mean`/`std` buffers are not
part of this module (the reference never applies mean/std when decoding).

Released sizes (the defaults of `SemanticDecoderConfig`): a 30 x 45 feature grid with 768
channels out, width 768, 12 layers, 12 heads (head dim 64), token size 768, 13 frames per
segment, 330 I-frame and 74 P-frame tokens (1,218 per segment), codebook 2048 x 16, RoPE theta
10000. A full segment is 13 * 1350 = 17,550 grid tokens plus 1,218 latent tokens.
"""

from __future__ import annotations

import operator
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.configs import SemanticDecoderConfig
from engine.models.rope import apply_rope, rope_angles_to_cis, rotation_frequencies


def rope_3d(coords: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotations [n, head_dim // 2] (complex64) for (t, h, w) coordinates [n, 3].

    Pairs 0 .. head_dim/8 - 1 turn with t at theta^(-2k / (head_dim/4)); the next head_dim*3/16
    pairs with h and the last head_dim*3/16 with w, both at theta^(-2k / (head_dim*3/8)).
    """
    if head_dim % 16:
        raise ValueError(f"head dim {head_dim} is not a multiple of 16")
    time_pairs, space_pairs = head_dim // 8, head_dim // 16 * 3
    coords = coords.float()
    angles = [
        coords[:, axis, None] * rotation_frequencies(pairs, theta).to(coords.device)
        for axis, pairs in enumerate((time_pairs, space_pairs, space_pairs))
    ]
    return rope_angles_to_cis(torch.cat(angles, dim=-1))


def token_groups(config: SemanticDecoderConfig, num_frames: int, device: torch.device) -> torch.Tensor:
    """Temporal group of every sequence position [grid tokens | I-frame tokens | P-frame tokens]."""
    grid = torch.arange(num_frames, device=device).repeat_interleave(config.tokens_per_frame)
    iframe = torch.zeros(config.iframe_tokens, dtype=torch.long, device=device)
    pframes = torch.arange(1, num_frames, device=device).repeat_interleave(config.pframe_tokens)
    return torch.cat([grid, iframe, pframes])


def group_causal_mask(groups: torch.Tensor) -> torch.Tensor:
    """Boolean [n, n], True where query (row) may attend key (column): group(key) <= group(query).

    The reference's rule, kept as the specification; SelfAttention computes it by grouping.
    """
    return groups[None, :] <= groups[:, None]


def token_positions(config: SemanticDecoderConfig, num_frames: int, device: torch.device) -> torch.Tensor:
    """RoPE coordinates [n, 3]: (t, h, w) for grid tokens (t-major), (j, j, j) for latent token j."""
    t, h, w = torch.meshgrid(
        torch.arange(num_frames, device=device),
        torch.arange(config.grid_height, device=device),
        torch.arange(config.grid_width, device=device),
        indexing="ij",
    )
    grid = torch.stack([t, h, w], dim=-1).reshape(-1, 3)
    latent = torch.arange(config.latent_tokens(num_frames), device=device)[:, None].expand(-1, 3)
    return torch.cat([grid, latent])


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in, and returned as, float32.

    The reference decodes under bf16 autocast, where layer norms run in float32 and their
    float32 output keeps the residual stream in float32; the linear layers then see bf16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.wq = nn.Linear(width, width, bias=False)
        self.wk = nn.Linear(width, width, bias=False)
        self.wv = nn.Linear(width, width, bias=False)
        self.wo = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cis: torch.Tensor, group_ends: list[int]) -> torch.Tensor:
        """x is ordered by temporal group; group g spans [group_ends[g-1], group_ends[g]).

        A query of group g may attend every key of groups <= g, which in this order is a
        prefix of the sequence: one unmasked attention call per group (flash-attention
        friendly, no n x n mask) computes exactly the reference's group-causal attention.
        """
        batch, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, -1)

        q = apply_rope(split(self.wq(x)), cis).transpose(1, 2)
        k = apply_rope(split(self.wk(x)), cis).transpose(1, 2)
        v = split(self.wv(x)).transpose(1, 2)
        starts = [0, *group_ends[:-1]]
        out = torch.cat(
            [
                F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end])
                for start, end in zip(starts, group_ends, strict=True)
            ],
            dim=2,
        )
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then + mlp(ln_2(x)); exact (erf) GELU."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.ln_1 = Float32LayerNorm(width)
        self.attn = SelfAttention(width, num_heads)
        self.ln_2 = Float32LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width),
                gelu=nn.GELU(),
                c_proj=nn.Linear(4 * width, width),
            )
        )

    def forward(self, x: torch.Tensor, cis: torch.Tensor, group_ends: list[int]) -> torch.Tensor:
        dtype = self.attn.wq.weight.dtype
        x = x + self.attn(self.ln_1(x).to(dtype), cis, group_ends)
        return x + self.mlp(self.ln_2(x).to(dtype))


class FeatureDecoder(nn.Module):
    """The `decoder.*` part: latent vectors [B, N, token_size] -> features [B, T, C, H, W]."""

    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.decoder_embed = nn.Linear(config.token_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.ln_pre = Float32LayerNorm(width)
        self.transformer = nn.ModuleList(
            DecoderBlock(width, config.num_heads) for _ in range(config.num_layers)
        )
        self.ln_post = Float32LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, config.feature_channels)
        )

    def forward(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        c = self.config
        batch = latents.shape[0]
        dtype = self.decoder_embed.weight.dtype
        grid_len = num_frames * c.tokens_per_frame
        tokens = self.decoder_embed(latents.to(dtype))
        queries = self.mask_token.to(dtype).expand(batch, grid_len, -1)
        x = self.ln_pre(torch.cat([queries, tokens], dim=1))
        # Attention runs on the sequence sorted by temporal group (see SelfAttention).
        groups = token_groups(c, num_frames, x.device)
        order = torch.argsort(groups, stable=True)
        group_ends = torch.bincount(groups, minlength=num_frames).cumsum(0).tolist()
        cis = rope_3d(token_positions(c, num_frames, x.device)[order], c.head_dim, c.rope_theta)
        x = x[:, order]
        for block in self.transformer:
            x = block(x, cis, group_ends)
        x = x[:, torch.argsort(order)]
        features = self.ffn(self.ln_post(x[:, :grid_len]).to(dtype))
        features = features.view(batch, num_frames, c.grid_height, c.grid_width, c.feature_channels)
        return features.permute(0, 1, 4, 2, 3).contiguous()


class Codebook(nn.Module):
    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(1, config.codebook_size, config.codebook_dim))


class CodebookLookup(nn.Module):
    """The `quantizer.*` part used for decoding: code id -> project_out(codebook[id])."""

    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self._codebook = Codebook(config)
        self.project_out = nn.Linear(config.codebook_dim, config.token_size)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(self._codebook.embed[0][codes])


class SemanticDecoder(nn.Module):
    """Semantic code ids -> semantic features per frame.

    Any frame count T >= 1 works: the grid, mask and positions are built for T, and the
    group-causal mask makes the first k frames of a T-frame decode equal a k-frame decode
    of the first I + (k - 1) * P codes. The model was trained on `frames_per_segment`.
    """

    def __init__(self, config: SemanticDecoderConfig):
        super().__init__()
        self.config = config
        self.quantizer = CodebookLookup(config)
        self.decoder = FeatureDecoder(config)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids [B, N] -> latent vectors [B, N, token_size] in the weights' dtype."""
        size = self.config.codebook_size
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integer ids in [0, {size}), got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
            raise ValueError(
                f"codes must be integer ids in [0, {size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.quantizer(codes.long())

    def forward(self, codes: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Codes [B, N], N = I + (num_frames - 1) * P, in LLM order -> features [B, T, C, H, W]."""
        num_frames = operator.index(num_frames)
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        c = self.config
        expected = c.latent_tokens(num_frames)
        if codes.ndim != 2 or codes.shape[1] != expected:
            raise ValueError(
                f"{num_frames} frames take {expected} codes per video "
                f"({c.iframe_tokens} + ({num_frames} - 1) x {c.pframe_tokens}), "
                f"got codes of shape {list(codes.shape)}"
            )
        return self.decoder(self.codes_to_latents(codes), num_frames)
