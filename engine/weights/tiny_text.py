"""Tiny T5 encoders with a real SentencePiece tokenizer, in Hugging Face folder layout.

The tokenizer is trained here in about a second on a small built-in corpus of
video-prompt-like sentences, with T5's special ids (pad 0, eos 1, unk 2, no bos), so
the tiny model tokenizes through the same code path as the release.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from engine.specs import T5Sizes

SUBJECTS = [
    "a snail",
    "a red fox",
    "two cats",
    "an old man",
    "a girl",
    "a dog",
    "a robot",
    "waves",
    "a horse",
    "birds",
]
ACTIONS = [
    "crawling on",
    "running through",
    "sleeping in",
    "walking along",
    "dancing on",
    "flying over",
    "looking at",
]
PLACES = [
    "green moss",
    "a snowy forest",
    "the beach at sunset",
    "a busy city street",
    "a quiet lake",
    "tall grass",
    "a wooden table",
    "the night sky",
]
STYLES = ["", ", cinematic lighting", ", slow motion", ", close-up shot", ", aerial view", ", in the rain"]


def corpus() -> list[str]:
    """A few thousand deterministic prompt-like sentences."""
    return [
        f"{subject.capitalize()} {action} {place}{style}."
        for subject, action, place, style in itertools.product(SUBJECTS, ACTIONS, PLACES, STYLES)
    ]


def train_tiny_sentencepiece(out_dir: Path, vocab_size: int) -> Path:
    """Train `spiece.model` with T5's conventions and write the tokenizer config next to it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        text = Path(scratch) / "corpus.txt"
        text.write_text("\n".join(corpus()) + "\n")
        prefix = Path(scratch) / "spiece"
        sentencepiece.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
        )
        # a move, not a rename: the temporary folder may be on another filesystem than the weights
        shutil.move(prefix.with_suffix(".model"), out_dir / "spiece.model")
    tokenizer_config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512}
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, **special}, indent=1))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    return out_dir / "spiece.model"


def t5_config(sizes: T5Sizes) -> T5Config:
    """The T5 v1.1 encoder's config at `sizes`: gated GELU, 32 relative-position buckets, untied
    embeddings, as the release's encoders."""
    # T5Config takes extra keyword arguments (strict(accept_kwargs=True)), which its typing does not show
    return T5Config(
        **asdict(sizes),
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=True,
        tie_word_embeddings=False,
    )


def write_tiny_t5(folder: Path, sizes: T5Sizes, *, seed: int, sharded: bool = False) -> None:
    """A random T5 encoder folder (config, weights, tokenizer) like the release's t5-v1_1-xxl."""
    config = t5_config(sizes)
    torch.manual_seed(seed)
    model = T5EncoderModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous().clone() for key, value in model.state_dict().items()}
    if sharded:
        keys = sorted(tensors)
        halves = {
            "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
        }
        for name, part in halves.items():
            save_file({key: tensors[key] for key in part}, str(folder / name))
        weight_map = {key: name for name, part in halves.items() for key in part}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1)
        )
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    train_tiny_sentencepiece(folder, min(sizes.vocab_size, 128))
    config.to_json_file(str(folder / "config.json"))
