"""Semantic decoder: golden parity, attention groups, positions, input checks, dtypes, checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.models.rope import apply_rope
from engine.models.semantic_decoder import (
    SemanticDecoder,
    SemanticDecoderConfig,
    group_causal_mask,
    rope_3d,
    token_groups,
    token_positions,
)
from engine.weights.checkpoints import CheckpointError
from engine.weights.loading import is_used_tokenizer_key, load_semantic_decoder

from .golden import assert_close_relative
from .refkeys import refkeys_or_skip

CPU = torch.device("cpu")

SMALL = SemanticDecoderConfig(
    grid_height=2,
    grid_width=3,
    feature_channels=8,
    width=32,
    num_layers=1,
    num_heads=2,
    token_size=8,
    frames_per_segment=3,
    iframe_tokens=4,
    pframe_tokens=2,
    codebook_size=16,
    codebook_dim=4,
)

# The reference's build_tokenizer() sizes, under its own names.
RELEASE_KNOBS = {
    "image_size": [30, 45],
    "image_channels": 768,
    "width": 768,
    "num_layers": 12,
    "num_heads": 12,
    "token_size": 768,
    "temporal_size": 13,
    "PFrame_tokens": 74,
    "Iframe_tokens": 330,
    "rope_dim": 64,
    "codebook_size": 2048,
    "codebook_dim": 16,
    "mean_std_dim": 768,
}


def is_decoding_key(key: str) -> bool:
    """The part of tokenizer/model.safetensors that decoding needs."""
    return key.startswith(("decoder.", "quantizer.project_out.")) or key == "quantizer._codebook.embed"


def random_decoder(config: SemanticDecoderConfig = SMALL, seed: int = 0) -> SemanticDecoder:
    torch.manual_seed(seed)
    model = SemanticDecoder(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model.eval()


def random_codes(config: SemanticDecoderConfig, num_frames: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, config.codebook_size, (batch, config.latent_tokens(num_frames)))


def test_groups_and_mask_follow_the_group_rule():
    frames, cells = 3, SMALL.tokens_per_frame
    groups = token_groups(SMALL, frames, CPU)
    assert groups.tolist() == [0] * cells + [1] * cells + [2] * cells + [0] * 4 + [1] * 2 + [2] * 2
    mask = group_causal_mask(groups)
    assert mask.dtype == torch.bool and mask.shape == (SMALL.sequence_length(frames),) * 2
    for query, query_group in enumerate(groups.tolist()):
        for key, key_group in enumerate(groups.tolist()):
            assert bool(mask[query, key]) == (key_group <= query_group)
    assert mask.diagonal().all() and mask.any(dim=1).all()


def test_positions_grid_then_diagonal_latents():
    positions = token_positions(SMALL, 3, CPU)
    assert positions.shape == (SMALL.sequence_length(3), 3)
    assert positions[0].tolist() == [0, 0, 0] and positions[7].tolist() == [1, 0, 1]
    assert positions[17].tolist() == [2, 1, 2]
    latent = positions[18:]
    assert latent.tolist() == [[j, j, j] for j in range(SMALL.latent_tokens(3))]


@pytest.mark.parametrize("head_dim", [16, 32, 64])
def test_rope_3d_axis_split_and_frequencies(head_dim: int):
    unit = torch.eye(3, dtype=torch.long)
    angles = rope_3d(unit, head_dim, theta=10000.0).angle()
    time_pairs, space_pairs = head_dim // 8, head_dim // 16 * 3
    assert angles.shape == (3, head_dim // 2) == (3, time_pairs + 2 * space_pairs)
    time = 10000.0 ** (-2 * torch.arange(time_pairs, dtype=torch.float64) / (head_dim // 4))
    space = 10000.0 ** (-2 * torch.arange(space_pairs, dtype=torch.float64) / (head_dim // 8 * 3))
    zeros_t, zeros_s = torch.zeros(time_pairs), torch.zeros(space_pairs)
    expected = torch.stack(
        [
            torch.cat([time.float(), zeros_s, zeros_s]),
            torch.cat([zeros_t, space.float(), zeros_s]),
            torch.cat([zeros_t, zeros_s, space.float()]),
        ]
    )
    torch.testing.assert_close(angles, expected)
    with pytest.raises(ValueError, match="multiple of 16"):
        rope_3d(unit, 24)


def test_shapes_and_batch_independence():
    model = random_decoder()
    codes = random_codes(SMALL, 3, batch=2)
    with torch.no_grad():
        latents = model.codes_to_latents(codes)
        both = model(codes, 3)
        second = model(codes[1:], 3)
    assert latents.shape == (2, SMALL.latent_tokens(3), SMALL.token_size)
    assert both.shape == (2, 3, SMALL.feature_channels, SMALL.grid_height, SMALL.grid_width)
    assert both.is_contiguous()
    torch.testing.assert_close(both[1:], second)


def test_a_later_frame_never_changes_an_earlier_one():
    model = random_decoder()
    codes = random_codes(SMALL, 3)
    changed = codes.clone()
    changed[0, -SMALL.pframe_tokens :] = (changed[0, -SMALL.pframe_tokens :] + 1) % SMALL.codebook_size
    with torch.no_grad():
        a, b = model(codes, 3), model(changed, 3)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_other_frame_counts_decode_like_a_prefix_of_a_longer_video():
    model = random_decoder()
    longest = 5  # more than frames_per_segment
    codes = random_codes(SMALL, longest)
    with torch.no_grad():
        full = model(codes, longest)
        for frames in (1, 2, 3):
            part = model(codes[:, : SMALL.latent_tokens(frames)], frames)
            assert part.shape[1] == frames
            torch.testing.assert_close(part, full[:, :frames], rtol=1e-5, atol=1e-6)


def test_wrong_inputs_are_clear_errors():
    model = random_decoder()
    with pytest.raises(ValueError, match=r"3 frames take 8 codes per video \(4 \+ \(3 - 1\) x 2\)"):
        model(torch.zeros(1, 7, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="2 frames take 6 codes"):
        model(torch.zeros(1, 8, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="got codes of shape"):
        model(torch.zeros(1, 1, 8, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="at least 1"):
        model(torch.zeros(1, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"integer ids in \[0, 16\)"):
        model(torch.full((1, 8), 16), 3)
    with pytest.raises(ValueError, match=r"integer ids in \[0, 16\)"):
        model(torch.full((1, 8), -1), 3)
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 8), 3)


def test_bf16_weights_run_in_bf16_with_float32_norms():
    model = random_decoder()
    codes = random_codes(SMALL, 3)
    with torch.no_grad():
        reference = model(codes, 3)
        half = model.to(torch.bfloat16)(codes, 3)
        normed = model.decoder.ln_pre(torch.randn(1, 4, SMALL.width, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and normed.dtype == torch.float32
    assert_close_relative(half, reference, 5e-2, "bf16 vs fp32 features")


def test_config_from_reference_knobs():
    assert SemanticDecoderConfig.from_reference_knobs(RELEASE_KNOBS) == SemanticDecoderConfig()
    square = {**RELEASE_KNOBS, "image_size": 16, "rope_dim": None}
    assert SemanticDecoderConfig.from_reference_knobs(square).grid_width == 16
    derived = {key: value for key, value in RELEASE_KNOBS.items() if key != "Iframe_tokens"}
    derived["num_latent_tokens"] = 1218
    assert SemanticDecoderConfig.from_reference_knobs(derived).iframe_tokens == 330
    with pytest.raises(ValueError, match="rope_dim 32 != head dim 64"):
        SemanticDecoderConfig.from_reference_knobs({**RELEASE_KNOBS, "rope_dim": 32})
    with pytest.raises(ValueError, match="multiple of 16"):
        SemanticDecoderConfig(width=96, num_heads=4)
    with pytest.raises(ValueError, match="not divisible"):
        SemanticDecoderConfig(width=100)


def test_full_size_keys_match_the_decoder_part_of_the_release_file():
    listing = refkeys_or_skip("tokenizer_model.safetensors.txt")
    with torch.device("meta"):
        model = SemanticDecoder(SemanticDecoderConfig.from_reference_knobs(RELEASE_KNOBS))
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == {key: shape for key, shape in listing.items() if is_decoding_key(key)}
    # The loader keeps exactly these keys and skips the rest of the file.
    assert {key for key in listing if is_used_tokenizer_key(key)} == ours.keys()


def test_loader_skips_training_parts_and_rejects_unknown_keys(tmp_path):
    model = random_decoder()
    tensors = {key: value.clone() for key, value in model.state_dict().items()}
    tensors.update(
        {"mean": torch.zeros(8), "std": torch.ones(8), "encoder.proj_out.weight": torch.zeros(8, 32)}
    )
    path = tmp_path / "tokenizer" / "model.safetensors"
    path.parent.mkdir()
    save_file(tensors, str(path))
    loaded = load_semantic_decoder(path, SMALL, device="cpu", dtype=torch.float32)
    codes = random_codes(SMALL, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(codes, 3), model(codes, 3))
    tensors["decoder.surprise"] = torch.zeros(1)
    del tensors["decoder.ln_post.bias"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as error:
        load_semantic_decoder(path, SMALL, device="cpu", dtype=torch.float32)
    for words in (str(path), "decoder.surprise", "decoder.ln_post.bias", "Re-download"):
        assert words in str(error.value)


def test_grouped_attention_equals_the_reference_mask():
    attention = random_decoder().decoder.transformer[0].attn
    groups = torch.sort(token_groups(SMALL, 3, CPU)).values
    ends = torch.bincount(groups).cumsum(0).tolist()
    x = torch.randn(2, groups.numel(), SMALL.width)
    cis = rope_3d(torch.randint(0, 5, (groups.numel(), 3)), SMALL.head_dim)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, -1, SMALL.num_heads, SMALL.head_dim).transpose(1, 2)

    q = heads(apply_rope(attention.wq(x).view(2, -1, SMALL.num_heads, SMALL.head_dim), cis).flatten(2))
    k = heads(apply_rope(attention.wk(x).view(2, -1, SMALL.num_heads, SMALL.head_dim), cis).flatten(2))
    v = heads(attention.wv(x))
    masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=group_causal_mask(groups))
    expected = attention.wo(masked.transpose(1, 2).reshape(2, -1, SMALL.width))
    with torch.no_grad():
        torch.testing.assert_close(attention(x, cis, ends), expected)
