"""T5 encoders from local Hugging Face folders, and the SentencePiece prompt tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Tokenizer

from engine.generation.text_encoder import (
    FlanT5PromptEncoder,
    T5PromptTokenizer,
    T5v11PromptEncoder,
    load_t5_encoder,
)
from engine.specs import T5Sizes
from engine.weights.checkpoints import CheckpointError, expected_shapes
from engine.weights.tiny_text import write_tiny_t5

from .refkeys import refkeys_or_skip

SIZES = dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=128)
PROMPTS = [
    "A snail crawling on green moss.",
    "  Two cats   dancing on the beach at sunset, slow motion ",
    "zebra Ωmega",
]


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("t5") / "single"
    write_tiny_t5(folder, T5Sizes(**SIZES), seed=3)
    return folder


def reference_model(folder: Path) -> T5EncoderModel:
    model = T5EncoderModel(T5Config.from_json_file(str(folder / "config.json"))).eval()
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model


def test_loaded_encoder_equals_transformers_own(t5_folder):
    ids = torch.tensor([[5, 9, 17, 1]])
    ours = load_t5_encoder(t5_folder, dtype=torch.float32, device="cpu")
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    assert ours.encoder.embed_tokens.weight is ours.shared.weight
    with torch.no_grad():
        expected = reference_model(t5_folder)(input_ids=ids).last_hidden_state
        torch.testing.assert_close(ours(input_ids=ids).last_hidden_state, expected)
    half = load_t5_encoder(t5_folder, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_sharded_folder_loads_the_same(tmp_path, t5_folder):
    folder = tmp_path / "sharded"
    write_tiny_t5(folder, T5Sizes(**SIZES), seed=3, sharded=True)
    assert not (folder / "model.safetensors").exists()
    ids = torch.tensor([[7, 8, 1]])
    a = load_t5_encoder(folder, dtype=torch.float32, device="cpu")
    b = load_t5_encoder(t5_folder, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).last_hidden_state, b(input_ids=ids).last_hidden_state)


def test_encoder_decoder_checkpoint_skips_the_decoder(tmp_path, t5_folder):
    """google/flan-t5-xxl ships the whole encoder-decoder model; only the encoder is read."""
    config = T5Config.from_json_file(str(t5_folder / "config.json"))
    full = T5ForConditionalGeneration(config).eval()
    folder = tmp_path / "flan"
    full.save_pretrained(str(folder))
    for name in ("spiece.model", "tokenizer_config.json"):
        (folder / name).write_bytes((t5_folder / name).read_bytes())
    ids = torch.tensor([[4, 6, 1]])
    ours = load_t5_encoder(folder, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        expected = full.encoder(input_ids=ids).last_hidden_state
        torch.testing.assert_close(ours(input_ids=ids).last_hidden_state, expected)


def broken_copy(source: Path, target: Path, edit) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(target / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return target


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: t.pop("encoder.final_layer_norm.weight"), ["missing", "encoder.final_layer_norm.weight"]),
        (lambda t: t.update({"encoder.extra": torch.zeros(1)}), ["unexpected", "encoder.extra"]),
        (
            lambda t: t.update({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(3, 3)}),
            ["shape", "encoder.block.0.layer.0.SelfAttention.q.weight"],
        ),
    ],
)
def test_bad_checkpoints_name_the_folder_and_keys(tmp_path, t5_folder, edit, words):
    folder = broken_copy(t5_folder, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError) as error:
        load_t5_encoder(folder, dtype=torch.float32, device="cpu")
    for word in [str(folder), "Re-download", *words]:
        assert word in str(error.value)


def test_missing_or_corrupt_files_are_clear_errors(tmp_path, t5_folder):
    with pytest.raises(CheckpointError, match="folder not found"):
        load_t5_encoder(tmp_path / "nowhere", dtype=torch.float32, device="cpu")
    folder = broken_copy(t5_folder, tmp_path / "corrupt", lambda t: None)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_t5_encoder(folder, dtype=torch.float32, device="cpu")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        load_t5_encoder(folder, dtype=torch.float32, device="cpu")


def test_tokenizer_matches_transformers_and_appends_eos(t5_folder):
    ours = T5PromptTokenizer(t5_folder)
    theirs = T5Tokenizer.from_pretrained(str(t5_folder), local_files_only=True)
    for prompt in PROMPTS:
        ids = ours.encode(prompt, 512)
        assert ids == theirs(prompt).input_ids
        assert ids[-1] == T5PromptTokenizer.EOS and T5PromptTokenizer.EOS not in ids[:-1]
    assert len(ours.encode(PROMPTS[1], 5)) == 5 and ours.encode(PROMPTS[1], 5)[-1] == 1


def test_prompt_encoders_follow_each_stage_convention(t5_folder):
    flan = FlanT5PromptEncoder.load(t5_folder, dtype=torch.float32, device="cpu", max_length=512)
    states = flan.encode(PROMPTS[0])
    assert states.shape == (1, len(flan.token_ids(PROMPTS[0])[0]), SIZES["d_model"])
    v11 = T5v11PromptEncoder.load(t5_folder, dtype=torch.float32, device="cpu", max_length=226)
    ids = v11.token_ids(PROMPTS[0])
    assert ids.shape == (1, 226) and int(ids[0, -1]) == 0
    assert ids[0, : flan.token_ids(PROMPTS[0]).shape[1]].tolist() == flan.token_ids(PROMPTS[0])[0].tolist()
    assert v11.encode(PROMPTS[0]).shape == (1, 226, SIZES["d_model"])
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="prompt must not be empty"):
            flan.encode(empty)


def test_full_size_t5_v1_1_keys_match_the_release_listing():
    listing = refkeys_or_skip("t5_v1_1_xxl_encoder.txt")
    config = T5Config(
        d_model=4096,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        d_kv=64,
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
    )
    with torch.device("meta"):
        model = T5EncoderModel(config)
    assert {key: list(shape) for key, shape in expected_shapes(model).items()} == listing


def test_tokenizer_config_says_no_extra_ids(t5_folder):
    assert json.loads((t5_folder / "tokenizer_config.json").read_text())["extra_ids"] == 0
    assert T5PromptTokenizer(t5_folder).vocab_size <= SIZES["vocab_size"]
