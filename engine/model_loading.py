"""Build LanDiff's stage-1 models and fill them from the release's files.

Models are constructed on the meta device and their tensors assigned straight from the
file in the target dtype and device, so no full-precision copy is ever made on the way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import stream_safetensors_into
from .models.llm import LLMConfig, SemanticLM
from .models.semantic_decoder import SemanticDecoder, SemanticDecoderConfig
from .weights import redownload_hint

# Parts of tokenizer/model.safetensors that text-to-video never uses: the semantic
# encoder, the quantizer's training state and input projection, and the feature statistics
# (the reference does not de-normalise). They are accepted and skipped.
TOKENIZER_UNUSED_PREFIXES = (
    "encoder.",
    "feature_extractor.",
    "quantizer.project_in.",
    "quantizer._codebook.embed_avg",
    "quantizer._codebook.cluster_size",
    "quantizer._codebook.initted",
)
TOKENIZER_UNUSED_KEYS = ("mean", "std")


def is_used_tokenizer_key(key: str) -> bool:
    return key not in TOKENIZER_UNUSED_KEYS and not key.startswith(TOKENIZER_UNUSED_PREFIXES)


def load_semantic_lm(
    path: Path, config: LLMConfig, *, device: torch.device | str, dtype: torch.dtype
) -> SemanticLM:
    """`llm/model.safetensors` -> SemanticLM with matmul weights in `dtype`, norms and head in float32."""
    with torch.device("meta"):
        model = SemanticLM(config)
    stream_safetensors_into(
        model,
        path,
        fix=redownload_hint(path),
        dtype_for=lambda key: torch.float32 if SemanticLM.keeps_float32(key) else dtype,
        device=device,
    )
    return model.eval().requires_grad_(False)


def load_semantic_decoder(
    path: Path, config: SemanticDecoderConfig, *, device: torch.device | str, dtype: torch.dtype
) -> SemanticDecoder:
    """`tokenizer/model.safetensors` -> the codebook and decoder half of the semantic tokenizer."""
    with torch.device("meta"):
        model = SemanticDecoder(config)
    stream_safetensors_into(
        model,
        path,
        fix=redownload_hint(path),
        keep=is_used_tokenizer_key,
        dtype_for=lambda key: dtype,
        device=device,
    )
    return model.eval().requires_grad_(False)
