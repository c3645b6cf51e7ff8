"""The T5 text encoders, loaded from local folders in Hugging Face layout.

LanDiff uses two: flan-t5-xxl for the language model (prompt tokens up to 512, padding
removed) and t5-v1_1-xxl for the diffusion model (226 tokens, padded, no attention mask).
The network is `transformers.T5EncoderModel`, built on the meta device and filled tensor
by tensor in the target dtype. A folder may hold an encoder-only checkpoint or a full
encoder-decoder one (google/flan-t5-xxl): decoder weights are skipped.

Tokenization runs SentencePiece directly on the folder's `spiece.model`, the way the
reference's slow `T5Tokenizer` does it (pieces, special tokens kept whole, `</s>`
appended); transformers 5 no longer ships that slow tokenizer and its fast conversion is
not guaranteed to give the same ids. The tokenizer lives in `prompt_tokens` (torch-free),
where the prompt's token limit is checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import T5Config, T5EncoderModel

from engine.generation.prompt_tokens import T5PromptTokenizer
from engine.weights.checkpoints import CheckpointError, check_state_dict, expected_shapes, require_file
from engine.weights.layout import redownload_hint

EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def _fix(folder: Path, source: str) -> str:
    return redownload_hint(folder, source)


def weight_files(folder: Path, fix: str) -> list[Path]:
    """The folder's safetensors files: `model.safetensors`, or the shards its index names."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = require_file(folder / "model.safetensors.index.json", "T5 weights index", fix)
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{index} is not a valid safetensors index ({error}). {fix}") from error
    return [require_file(folder / shard, "T5 weights shard", fix) for shard in shards]


def is_encoder_key(key: str) -> bool:
    return key.startswith("encoder.") or key == "shared.weight"


def load_t5_encoder(
    folder: Path, *, dtype: torch.dtype, device: torch.device | str, source: str = "Hugging Face"
) -> T5EncoderModel:
    """A T5 encoder from a local Hugging Face folder, every tensor in `dtype` on `device`."""
    fix = _fix(folder, source)
    if not folder.is_dir():
        raise CheckpointError(f"T5 encoder folder not found: {folder} is missing. {fix}")
    config_file = require_file(folder / "config.json", "T5 config", fix)
    try:
        config = T5Config.from_json_file(str(config_file))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_file} is not a valid T5 config ({error}). {fix}") from error
    config.is_encoder_decoder = False
    config.use_cache = False
    with torch.device("meta"):
        model = T5EncoderModel(config)
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, fix):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if is_encoder_key(key):
                        tensors[key] = handle.get_tensor(key).to(device=device, dtype=dtype)
        except Exception as error:  # safetensors raises its own SafetensorError for damaged files
            raise CheckpointError(f"{path} could not be read as safetensors ({error}). {fix}") from error
    for key, other in (EMBEDDING_KEYS, EMBEDDING_KEYS[::-1]):
        if key not in tensors and other in tensors:
            tensors[key] = tensors[other]  # the two embeddings are tied; files may hold either
    check_state_dict(expected_shapes(model), tensors, source=folder, fix=fix)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.encoder.embed_tokens.weight = model.shared.weight
    return model.eval().requires_grad_(False)


def require_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must not be empty: describe the video to generate")
    return prompt


class PromptEncoder:
    """A T5 encoder with its tokenizer; subclasses fix how a prompt becomes ids and states."""

    SOURCE = "Hugging Face"
    MAX_LENGTH = 512

    def __init__(self, model: T5EncoderModel, tokenizer: T5PromptTokenizer, max_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_length = max_length or self.MAX_LENGTH

    @classmethod
    def load(cls, folder: Path, *, dtype: torch.dtype, device, max_length: int | None = None):
        model = load_t5_encoder(folder, dtype=dtype, device=device, source=cls.SOURCE)
        return cls(model, T5PromptTokenizer(folder, cls.SOURCE), max_length)


class FlanT5PromptEncoder(PromptEncoder):
    """Stage 1's text path: prompt -> flan-T5 hidden states [1, L, d_model], L <= max_length."""

    SOURCE = "the Hugging Face repo google/flan-t5-xxl"
    MAX_LENGTH = 512

    def token_ids(self, prompt: str) -> torch.Tensor:
        return torch.tensor([self.tokenizer.encode(require_prompt(prompt), self.max_length)])

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        ids = self.token_ids(prompt).to(self.model.device)
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


class T5v11PromptEncoder(PromptEncoder):
    """Stage 2's text path: prompt -> T5 v1.1 states [1, max_length, d_model], right-padded, no mask."""

    SOURCE = "the Hugging Face repo yinaoxiong/LanDiff"
    MAX_LENGTH = 226

    def token_ids(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer.encode(require_prompt(prompt), self.max_length)
        return torch.tensor([ids + [T5PromptTokenizer.PAD] * (self.max_length - len(ids))])

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        return self.model(input_ids=self.token_ids(prompt).to(self.model.device)).last_hidden_state
