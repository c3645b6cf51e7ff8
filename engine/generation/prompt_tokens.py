"""The prompt's token limit, and the SentencePiece T5 tokenizer that counts it. Imports no torch.

The language model reads at most `max_text_tokens` flan-T5 tokens of a prompt (its `</s>` included); a
longer prompt is refused, never cut, with the one message `engine.params.prompt_too_long`. `generate` and
`tokens` check a prompt here before loading any model, the engine at submit, and stage 1 again when it
encodes the prompt. Stage 2's T5 reads the first `spec.text_tokens` tokens, as the reference does; the
prompt's help text says so.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import sentencepiece

from engine.errors import CheckpointError
from engine.params import prompt_too_long
from engine.weights.layout import redownload_hint

SPECIAL_TOKEN = re.compile(r"(</s>|<pad>|<unk>|<extra_id_\d+>)")


class T5PromptTokenizer:
    """The ids the slow SentencePiece T5 tokenizer gives: pieces, special tokens whole, then `</s>`."""

    PAD, EOS, UNK = 0, 1, 2

    def __init__(self, folder: Path, source: str = "Hugging Face"):
        model_file = folder / "spiece.model"
        if not model_file.is_file():
            raise CheckpointError(
                f"SentencePiece model not found: {model_file} is missing. {redownload_hint(folder, source)}"
            )
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        size = self.processor.get_piece_size()
        self.extra_ids = self._extra_ids(folder)
        self.vocab_size = size + self.extra_ids

    @staticmethod
    def _extra_ids(folder: Path) -> int:
        config = folder / "tokenizer_config.json"
        if config.is_file():
            value = json.loads(config.read_text()).get("extra_ids")
            if isinstance(value, int):
                return value
        return 100  # T5's default: <extra_id_0..99> sit after the SentencePiece vocabulary

    def _special_id(self, token: str) -> int:
        if token.startswith("<extra_id_"):
            number = int(token[len("<extra_id_") : -1])
            if number < self.extra_ids:
                return self.vocab_size - 1 - number
            return -1
        return {"</s>": self.EOS, "<pad>": self.PAD, "<unk>": self.UNK}[token]

    def ids(self, text: str) -> list[int]:
        """Every token id of `text`, ending with `</s>`."""
        ids: list[int] = []
        for part in SPECIAL_TOKEN.split(text):
            special = self._special_id(part) if SPECIAL_TOKEN.fullmatch(part) else -1
            if special >= 0:
                ids.append(special)
            elif part.strip():
                ids.extend(self.processor.encode(part))
        return ids + [self.EOS]

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids ending with `</s>`, truncated to `max_length` in total (stage 2, as the reference)."""
        ids = self.ids(text)
        return ids[: max_length - 1] + [self.EOS] if len(ids) > max_length else ids


def check_token_count(ids: list[int], limit: int, model: str) -> list[int]:
    if len(ids) > limit:
        raise ValueError(prompt_too_long(len(ids), limit, model))
    return ids


@cache
def _tokenizer(folder: Path, source: str) -> T5PromptTokenizer:
    return T5PromptTokenizer(folder, source)


def check_prompt_fits(prompt: str, spec, flan_t5_dir: Path) -> int:
    """The prompt's flan-T5 token count, or ValueError when the model's language model cannot read it all.

    `spec` is the `engine.specs.ModelSpec`; `flan_t5_dir` the release layout's flan-T5 folder (its
    `spiece.model`; a missing one is a CheckpointError saying what to download).
    """
    from engine.weights.layout import FLAN_T5_SOURCE

    ids = _tokenizer(Path(flan_t5_dir), FLAN_T5_SOURCE).ids(prompt)
    return len(check_token_count(ids, spec.llm.max_text_tokens, spec.name))
