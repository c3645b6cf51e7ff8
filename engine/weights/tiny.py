"""Random `tiny` weights written in the release's own file layout.

Tests and the no-GPU demo load these through the same loaders as the real release, so
the files carry everything the release files carry: the tokenizer file includes the
semantic encoder, quantizer training state and feature statistics that inference skips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.models.embeddings import get_3d_sincos_pos_embed

from engine.atomic import write_atomically
from engine.models.control_dit import ControlDiT
from engine.models.llm import SemanticLM
from engine.models.semantic_decoder import SemanticDecoder
from engine.models.video_vae import build_vae
from engine.specs import ModelSpec, T5Sizes
from engine.weights.layout import (
    CLIP_FILES,
    CLIP_FOLDER,
    FLAN_T5_FILES,
    RELEASE_MD5,
    TINY_CHECKSUMS,
    ReleaseLayout,
)
from engine.weights.random_weights import randomise, save_atomically, save_torch_atomically
from engine.weights.sat_keys import sat_dit_from_ours, sat_vae_decoder_from_ours
from engine.weights.tiny_clip import write_tiny_clip
from engine.weights.tiny_text import write_tiny_t5


def tokenizer_training_parts(spec: ModelSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The parts of tokenizer/model.safetensors that text-to-video inference does not use."""
    d = spec.decoder
    width, tokens, channels = d.width, d.token_size, d.feature_channels

    def rand(*shape: int) -> torch.Tensor:
        return 0.02 * torch.randn(shape, generator=generator)

    parts = {
        "mean": rand(channels),
        "std": 1.0 + rand(channels).abs(),
        "encoder.IFrame_latent_tokens": rand(d.iframe_tokens, width),
        "encoder.PFrame_latent_tokens": rand(d.pframe_tokens, width),
        "encoder.patch_embed.weight": rand(width, channels, 1, 1),
        "encoder.patch_embed.bias": rand(width),
        "encoder.proj_out.weight": rand(tokens, width),
        "encoder.proj_out.bias": rand(tokens),
        "quantizer.project_in.weight": rand(d.codebook_dim, tokens),
        "quantizer.project_in.bias": rand(d.codebook_dim),
        "quantizer._codebook.initted": torch.ones(1),
        "quantizer._codebook.cluster_size": torch.ones(1, d.codebook_size),
        "quantizer._codebook.embed_avg": rand(1, d.codebook_size, d.codebook_dim),
    }
    for norm in ("ln_pre", "ln_post"):
        parts[f"encoder.{norm}.weight"] = torch.ones(width)
        parts[f"encoder.{norm}.bias"] = torch.zeros(width)
    for layer in range(d.num_layers):
        prefix = f"encoder.transformer.{layer}."
        for norm in ("ln_1", "ln_2"):
            parts[prefix + f"{norm}.weight"] = torch.ones(width)
            parts[prefix + f"{norm}.bias"] = torch.zeros(width)
        for proj in ("wq", "wk", "wv", "wo"):
            parts[prefix + f"attn.{proj}.weight"] = rand(width, width)
        parts[prefix + "mlp.c_fc.weight"] = rand(4 * width, width)
        parts[prefix + "mlp.c_fc.bias"] = rand(4 * width)
        parts[prefix + "mlp.c_proj.weight"] = rand(width, 4 * width)
        parts[prefix + "mlp.c_proj.bias"] = rand(width)
    return parts


def write_t5_folder(folder: Path, sizes: T5Sizes, seed: int, sharded: bool = False) -> None:
    write_tiny_t5(folder, sizes, seed=seed, sharded=sharded)


def write_tiny_release(layout: ReleaseLayout, spec: ModelSpec, seed: int = 0) -> None:
    """Write every stage-1 file of `spec` with random weights under `layout`."""
    generator = torch.Generator().manual_seed(seed)
    lm = randomise(SemanticLM(spec.llm), generator)
    save_atomically(lm.state_dict(), layout.llm_file)
    decoder = randomise(SemanticDecoder(spec.decoder), generator, std=0.2)
    save_atomically(
        {**decoder.state_dict(), **tokenizer_training_parts(spec, generator)}, layout.tokenizer_file
    )
    write_t5_folder(layout.flan_t5_dir, spec.flan_t5, seed)
    write_tiny_stage2(layout, spec, generator, seed)
    write_checksum_list(layout)
    write_tiny_clip(layout.clip_dir, seed)  # the quality probe's, optional: written last


def write_checksum_list(layout: ReleaseLayout) -> None:
    """The tiny bundle's own `md5  path` list: `weights verify` checks these files as it does the release."""
    from engine.weights.downloads import md5_of

    lines = [
        f"{md5_of(path)}  {path.relative_to(layout.bundle).as_posix()}\n"
        for path in sorted(layout.bundle.rglob("*"))
        if path.is_file()
    ]
    write_atomically(layout.root / TINY_CHECKSUMS, lambda partial: partial.write_text("".join(lines)))


def sincos_table(spec: ModelSpec) -> torch.Tensor:
    """SAT's stored `pos_embedding`: zeros for the text rows, the 3-D sin-cos table for the video rows."""
    frames, _, height, width = spec.latent_shape(spec.llm.frames_per_segment)
    p, dim = spec.dit.patch_size, spec.dit.hidden_size
    video = get_3d_sincos_pos_embed(dim, (width // p, height // p), frames, spec.dit.spatial_interpolation)
    return torch.cat([torch.zeros(spec.text_tokens, dim), video.reshape(-1, dim).float()])[None]


def write_tiny_stage2(layout: ReleaseLayout, spec: ModelSpec, generator: torch.Generator, seed: int) -> None:
    """The diffusion side in SAT layout: main DiT, control branch (+ the VQ copy it carries), VAE, T5 v1.1."""
    network = randomise(ControlDiT(spec.dit), generator).state_dict()
    table = sincos_table(spec)
    main = {**sat_dit_from_ours(network, "main"), "mixins.pos_embed.pos_embedding": table}
    save_torch_atomically(
        {"module": {f"model.diffusion_model.{k}": v for k, v in main.items()}}, layout.dit_file
    )
    (layout.dit_file.parents[1] / "latest").write_text(f"{layout.dit_file.parent.name}\n")
    decoder_copy = randomise(SemanticDecoder(spec.decoder), generator, std=0.2).state_dict()
    control = {
        **sat_dit_from_ours(network, "control"),
        "mixins.pos_embed.pos_embedding": table,
        "transformer.final_layernorm.weight": torch.ones(spec.dit.hidden_size),
        "transformer.final_layernorm.bias": torch.zeros(spec.dit.hidden_size),
        **{f"semantic_conditioner.semantic_model.model.{k}": v for k, v in decoder_copy.items()},
    }
    module = {f"model.control_model.diffusion_model.{k}": v for k, v in control.items()}
    save_torch_atomically({"module": module}, layout.control_file)
    (layout.control_file.parents[1] / "latest").write_text(layout.control_file.parent.name)
    vae = randomise(build_vae(spec.vae), generator, std=0.05).state_dict()
    decoder = sat_vae_decoder_from_ours(vae, spec.vae.levels)
    encoder_part = {"encoder.conv_in.conv.weight": torch.zeros(spec.vae.base_channels, 3, 3, 3, 3)}
    save_torch_atomically({"state_dict": {**decoder, **encoder_part}}, layout.vae_file)
    write_t5_folder(layout.t5_dir, spec.t5, seed + 1, sharded=True)


def release_files(layout: ReleaseLayout) -> list[Path]:
    """One file per model whose presence means that model's tiny weights were written completely."""
    return [
        layout.llm_file,
        layout.tokenizer_file,
        layout.flan_t5_dir / "config.json",
        layout.dit_file,
        layout.control_file,
        layout.vae_file,
        layout.t5_dir / "config.json",
    ]


def ensure_tiny_release(layout: ReleaseLayout, spec: ModelSpec) -> bool:
    """Write the tiny weights unless all of them are there (only the missing ones: `make_tiny_release`);
    True when something was written. A quick check (no file is read): the pipeline calls it on every start."""
    if all(path.is_file() for path in release_files(layout)) and (layout.root / TINY_CHECKSUMS).is_file():
        return False
    return bool(make_tiny_release(layout, spec).written)


BUNDLE = "LanDiff/"
# The release's files the tiny bundle has no counterpart for (its T5 tokenizer adds no tokens).
NOT_IN_TINY = ("CogVideoX-2b-sat/t5-v1_1-xxl/added_tokens.json",)


def tiny_file_names() -> list[str]:
    """Every file of the tiny model's weights, relative to its root (all that `write_tiny_release` writes):
    the bundle in the release's layout file for file, flan-T5's encoder as one file, the CLIP, the list."""
    bundle = [BUNDLE + name for name in RELEASE_MD5 if name not in NOT_IN_TINY]
    flan = [f"flan-t5-xxl/{name}" for name in (*FLAN_T5_FILES, "model.safetensors")]
    clip = [f"{CLIP_FOLDER}/{name}" for name in CLIP_FILES]
    return sorted([*bundle, *flan, *clip, TINY_CHECKSUMS])


def lacking_tiny_files(root: Path) -> list[str]:
    """The tiny model's files under `root` that must be written: missing, or not matching their sum (the
    bundle's own CHECKSUM.md5; for the others the digest recorded when the engine wrote them, if any);
    the list itself when it is missing, unreadable or misses a bundle file. [] when all are there."""
    from engine.weights.downloads import DownloadError, VerificationRecord, intact, read_checksums
    from engine.weights.layout import WeightFile

    try:
        sums: dict[str, str] | None = read_checksums(root / TINY_CHECKSUMS)
    except (OSError, ValueError, DownloadError):
        sums = None  # missing or damaged: written again, from the bundle's files
    record = VerificationRecord(root)
    lacking = []
    for name in tiny_file_names():
        if name == TINY_CHECKSUMS:
            continue
        path = root / name
        md5 = (sums or {}).get(name.removeprefix(BUNDLE)) if name.startswith(BUNDLE) else None
        checked = WeightFile("tiny", name, name, (), md5)
        if not path.is_file() or record.result(root, name) is False or not intact(path, checked, record):
            lacking.append(name)
    bundle = {name.removeprefix(BUNDLE) for name in tiny_file_names() if name.startswith(BUNDLE)}
    if sums is None or not bundle <= set(sums) or any(name.startswith(BUNDLE) for name in lacking):
        lacking.append(TINY_CHECKSUMS)
    return sorted(lacking)


@dataclass
class TinyOutcome:
    """What `make_tiny_release` did: the files it wrote and those it found there and kept (root-relative)."""

    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def make_tiny_release(
    layout: ReleaseLayout, spec: ModelSpec, seed: int = 0, remember: bool = False
) -> TinyOutcome:
    """Write the tiny model's files that are missing or damaged (`lacking_tiny_files`), and only those: the
    whole set is generated in a scratch folder beside them (the same seed gives the same tensors, so new
    files match the kept ones) and the lacking files are renamed into place. Nothing is written when all
    are there and check out. `remember`: record each written file as verified, with its digest, as a
    download does (so `weights status` says verified and `weights verify` checks them)."""
    root = layout.root
    names = tiny_file_names()
    lacking = lacking_tiny_files(root)
    if not lacking:
        return TinyOutcome(written=[], kept=names)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-scratch-", dir=root))  # same disk: the renames are atomic
    try:
        write_tiny_release(ReleaseLayout(scratch), spec, seed)
        for name in lacking:
            if name != TINY_CHECKSUMS:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(scratch / name, root / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if TINY_CHECKSUMS in lacking:
        write_checksum_list(layout)
    if remember:
        remember_written(root, [name for name in lacking if name != TINY_CHECKSUMS])
    return TinyOutcome(written=lacking, kept=[name for name in names if name not in lacking])


def remember_written(root: Path, names: list[str]) -> None:
    """Record freshly written files as verified: the bundle's by their MD5 (the list names it), the others
    by their SHA-256 (as the hub's digest would be) and size."""
    from engine.weights.downloads import VerificationRecord, digest_of

    record = VerificationRecord(root)
    for name in names:
        path = root / name
        if name.startswith(BUNDLE):
            record.remember(root, name, True, digest_of(path, "md5"))
        else:
            record.expect(name, path.stat().st_size, f"sha256:{digest_of(path, 'sha256')}")
            record.remember(root, name, True, None)
