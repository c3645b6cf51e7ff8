"""Discovering the reference implementation's golden cases (see ../shared/golden/README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


def golden_dirs() -> list[Path]:
    configured = os.environ.get("LANDIFF_GOLDEN_DIRS")
    if configured:
        return [Path(part) for part in configured.split(os.pathsep) if part]
    return [DEFAULT_GOLDEN]


def golden_cases(prefix: str) -> list[ParameterSet]:
    """One pytest param per case folder whose name starts with `prefix`, named after the folder."""
    cases = [
        case
        for root in golden_dirs()
        if root.is_dir()
        for case in sorted(root.iterdir())
        if case.is_dir() and case.name.startswith(prefix) and (case / "config.json").is_file()
    ]
    if not cases:
        where = ", ".join(str(root) for root in golden_dirs())
        return [
            pytest.param(
                None, id=f"{prefix}none", marks=pytest.mark.skip(reason=f"no {prefix}* cases in {where}")
            )
        ]
    return [pytest.param(case, id=case.name) for case in cases]


def read_config(case: Path) -> dict:
    return json.loads((case / "config.json").read_text())


def load_pt(case: Path, name: str):
    return torch.load(case / name, weights_only=True)


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """max |a - e| <= rel * max |e| (plus a tiny floor), a scale-aware tolerance for random-weight cases."""
    actual, expected = actual.float(), expected.float()
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= rel * scale + 1e-6, (
        f"{what}: max abs error {error:.3g} > {rel} x max |expected| {scale:.3g}"
    )


def llm_config(config: dict):
    """Our LLMConfig from an llm_sample_* case's reference knobs."""
    from engine.models.configs import LLMConfig

    knobs, tokenizer = config["knobs"], config["tokenizer_knobs"]
    result = LLMConfig(
        hidden_dim=knobs["hidden_dim"],
        num_heads=knobs["num_heads"],
        mlp_dim=knobs["mlp_dim"],
        num_blocks=knobs["num_blocks"],
        rope_max_len=knobs["rope_max_len"],
        codebook_size=tokenizer["codebook_size"],
        iframe_tokens=knobs["Iframe_len"],
        pframe_tokens=knobs["Pframe_len"],
        frames_per_segment=knobs["segment_length"],
        micro_frequency_dim=knobs["freq_emb"],
        micro_hidden_dim=knobs["micro_hidden"],
        text_dim=t5_sizes(knobs["t5"])["d_model"],
        max_text_tokens=knobs["max_cond_tokens_num"],
    )
    assert result.head_dim == knobs["rope_dim"], "the reference's RoPE spans one attention head"
    return result


def decoder_config(knobs: dict):
    """Our SemanticDecoderConfig from a case's tokenizer knobs."""
    from engine.models.configs import SemanticDecoderConfig

    return SemanticDecoderConfig.from_reference_knobs(knobs)


def t5_sizes(description: str) -> dict[str, int]:
    """'tiny T5: d_model 32, d_ff 64, 2 layers, 4 heads, d_kv 8, vocab 128' -> sizes."""
    import re

    named = {key: int(value) for key, value in re.findall(r"(d_model|d_ff|d_kv|vocab)\s+(\d+)", description)}
    counted = {key: int(value) for value, key in re.findall(r"(\d+)\s+(layers|heads)", description)}
    return {**named, **counted}


def dit_config(config: dict):
    """Our DiTConfig from a diffusion_* case's knobs."""
    from engine.models.configs import DiTConfig

    knobs, tokenizer = config["knobs"], config["tokenizer_knobs"]
    return DiTConfig(
        hidden_size=knobs["hidden_size"],
        num_heads=knobs["num_attention_heads"],
        num_layers=knobs["num_layers_main"],
        control_layers=knobs["num_layers_control"],
        time_embed_dim=knobs["time_embed_dim"],
        text_dim=knobs["text_hidden_size"],
        latent_channels=knobs["in_channels"],
        semantic_channels=tokenizer["image_channels"],
        upsampler_channels=knobs["upsample_ch"],
        upsampler_res_blocks=knobs["upsample_res_blocks"],
        upsampler_out_channels=knobs["semantic_out_dim"],
    )


def vae_config(config: dict):
    """Our VAEConfig from a diffusion_* case's knobs (the release's channel multipliers)."""
    from engine.models.configs import VAEConfig

    knobs = config["knobs"]
    return VAEConfig(base_channels=knobs["vae_ch"], res_blocks=knobs["vae_res_blocks"])
