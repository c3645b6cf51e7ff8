"""A tiny random CLIP in the Hugging Face layout of openai/clip-vit-base-patch32, made locally.

The tiny model's quality probe scores frames with it through the same loading code as the real CLIP
(config.json, model.safetensors, the BPE tokenizer's vocab.json and merges.txt, the preprocessor config).
Its vocabulary is the byte-level alphabet, each symbol also as a word end, with no merges: any text
tokenizes, one token per character (spaces only separate words). The scores it gives mean nothing;
they are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPModel

from engine.atomic import write_atomically
from engine.weights.layout import CLIP_FILES
from engine.weights.random_weights import randomise, save_atomically

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_SIZE = 32
# openai/clip-vit-base-patch32's normalisation, so the preprocessing is the real one at a small size
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_vocabulary() -> list[str]:
    alphabet = sorted(ByteLevel.alphabet())
    return [*alphabet, *(symbol + "</w>" for symbol in alphabet), BOS, EOS]


def tiny_clip_config(vocab_size: int) -> CLIPConfig:
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,  # pooled at the end-of-text token, as the release's
        "pad_token_id": vocab_size - 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def write_text(folder: Path, name: str, content: str) -> None:
    write_atomically(folder / name, lambda partial: partial.write_text(content))


def write_tiny_clip(folder: Path, seed: int = 0) -> None:
    """Every file of `CLIP_FILES` under `folder`, weights last (their presence means complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = tiny_vocabulary()
    write_text(folder, "vocab.json", json.dumps({token: i for i, token in enumerate(vocabulary)}))
    write_text(folder, "merges.txt", "#version: 0.2\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    write_text(folder, "special_tokens_map.json", json.dumps(special, indent=1))
    tokenizer = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    write_text(folder, "tokenizer_config.json", json.dumps(tokenizer, indent=1))
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE},
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_normalize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "resample": 3,
    }
    write_text(folder, "preprocessor_config.json", json.dumps(preprocessor, indent=1))
    config = tiny_clip_config(len(vocabulary))
    write_text(folder, "config.json", config.to_json_string())
    with torch.random.fork_rng():  # the model's own initialisation draws from the global generator
        torch.manual_seed(seed)
        model = CLIPModel(config)
    randomise(model, torch.Generator().manual_seed(seed), std=0.2)
    save_atomically(model.state_dict(), folder / "model.safetensors")


def tiny_clip_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CLIP_FILES)
