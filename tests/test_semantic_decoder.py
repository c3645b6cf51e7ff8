"""Semantic decoder: attention groups, positions, input checks, checkpoint keys and loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoints import CheckpointError
from engine.model_loading import is_used_tokenizer_key, load_semantic_decoder
from engine.models.semantic_decoder import SemanticDecoder, SemanticDecoderConfig, rope_3d
from engine.specs import get_spec

from .refkeys import refkeys_or_skip

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


def random_decoder(config: SemanticDecoderConfig = SMALL) -> SemanticDecoder:
    torch.manual_seed(0)
    model = SemanticDecoder(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model.eval()


def test_group_causal_mask():
    decoder = random_decoder().decoder
    frames, cells = 3, SMALL.grid_height * SMALL.grid_width
    groups = decoder.groups(frames, torch.device("cpu")).tolist()
    assert groups == [0] * cells + [1] * cells + [2] * cells + [0] * 4 + [1] * 2 + [2] * 2
    mask = decoder.attention_mask(frames, torch.device("cpu"))
    for query, query_group in enumerate(groups):
        for key, key_group in enumerate(groups):
            assert bool(mask[query, key]) == (key_group <= query_group)


def test_a_later_frame_never_changes_an_earlier_one():
    decoder = random_decoder()
    codes = torch.randint(0, SMALL.codebook_size, (1, SMALL.latent_tokens(3)))
    changed = codes.clone()
    changed[0, -SMALL.pframe_tokens :] = (changed[0, -SMALL.pframe_tokens :] + 1) % SMALL.codebook_size
    with torch.no_grad():
        a, b = decoder(codes, 3), decoder(changed, 3)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_positions_and_rope_split():
    decoder = random_decoder().decoder
    positions = decoder.positions(3, torch.device("cpu"))
    assert positions[0].tolist() == [0, 0, 0] and positions[7].tolist() == [1, 0, 1]
    assert positions[18].tolist() == [0, 0, 0] and positions[-1].tolist() == [7, 7, 7]
    cis = rope_3d(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), head_dim=64, theta=10000.0)
    angles = cis.angle()
    assert cis.shape == (3, 32)
    assert torch.count_nonzero(angles[0]) == 8 and torch.count_nonzero(angles[0, 8:]) == 0
    assert torch.count_nonzero(angles[1, 8:20]) == 12 and torch.count_nonzero(angles[1, 20:]) == 0
    assert torch.count_nonzero(angles[2, 20:]) == 12
    torch.testing.assert_close(angles[1, 9], torch.tensor(10000.0 ** (-2 / 24)))


def test_wrong_code_count_or_range_is_a_clear_error():
    decoder = random_decoder()
    with pytest.raises(ValueError, match="3 frames take 8 codes"):
        decoder(torch.zeros(1, 7, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"codes must be integers in \[0, 16\)"):
        decoder(torch.full((1, 8), 16), 3)


def test_full_size_keys_match_the_decoder_part_of_the_release_file():
    listing = refkeys_or_skip("tokenizer_model.safetensors.txt")
    with torch.device("meta"):
        model = SemanticDecoder(get_spec("landiff").decoder)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == {key: shape for key, shape in listing.items() if is_used_tokenizer_key(key)}
    skipped = sorted(key for key in listing if not is_used_tokenizer_key(key))
    assert "mean" in skipped and "std" in skipped and any(k.startswith("encoder.") for k in skipped)


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
    codes = torch.randint(0, 16, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(codes, 3), model(codes, 3))
    tensors["decoder.surprise"] = torch.zeros(1)
    del tensors["decoder.ln_post.bias"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as error:
        load_semantic_decoder(path, SMALL, device="cpu", dtype=torch.float32)
    for words in (str(path), "decoder.surprise", "decoder.ln_post.bias", "Re-download"):
        assert words in str(error.value)
