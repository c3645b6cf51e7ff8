"""Build LanDiff's stage-1 models and fill them from the release's files.

Models are constructed on the meta device and their tensors assigned straight from the
file in the target dtype and device, so no full-precision copy is ever made on the way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.configs import DiTConfig, LLMConfig, SemanticDecoderConfig, VAEConfig
from engine.models.control_dit import ControlDiT
from engine.models.llm import SemanticLM
from engine.models.semantic_decoder import SemanticDecoder
from engine.models.video_vae import build_vae
from engine.weights.checkpoints import (
    CheckpointError,
    check_shapes,
    check_state_dict,
    expected_shapes,
    require_file,
    stream_safetensors_into,
)
from engine.weights.layout import ReleaseLayout, redownload_hint
from engine.weights.sat_keys import convert_dit, convert_vae_decoder, is_fused, sat_dit_shapes
from engine.weights.sat_pickle import UNREADABLE, load_sat_pickle

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


def read_sat_checkpoint(path: Path, entry: str, *, fix: str) -> dict[str, torch.Tensor]:
    """The `entry` dict ("module" or "state_dict") of a SAT/DeepSpeed .pt file, memory-mapped.

    Whatever else the file carries (training arguments, optimizer state, objects of classes that are not
    installed) is loaded inert and dropped; see `sat_pickle`.
    """
    require_file(path, "Checkpoint", fix)
    try:
        content = load_sat_pickle(path).content
    except UNREADABLE as error:
        raise CheckpointError(f"{path} could not be read as a torch checkpoint ({error}). {fix}") from error
    tensors = content.get(entry) if isinstance(content, dict) else None
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{path} has no '{entry}' dictionary of tensors. {fix}")
    not_tensors = sorted(str(key) for key, value in tensors.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        shown = ", ".join(not_tensors[:5])
        raise CheckpointError(f"{path}: '{entry}' holds entries that are not tensors ({shown}). {fix}")
    return tensors


def checkpoint_step_file(folder: Path, fix: str) -> Path:
    """`<folder>/<step>/mp_rank_00_model_states.pt`, the step named by `<folder>/latest`."""
    latest = require_file(folder / "latest", "Checkpoint pointer", fix)
    step = latest.read_text().strip()
    if not step or "/" in step or step.startswith("."):
        raise CheckpointError(f"{latest} should name a step folder, found {step!r}. {fix}")
    return folder / step / "mp_rank_00_model_states.pt"


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def is_main_dit_key(key: str) -> bool:
    """Whether a ControlDiT tensor comes from the CogVideoX-2b file (else from LanDiff's diffusion file)."""
    return key.startswith(("main.", "norm_final.", "norm_out.", "proj_out."))


MAIN_DIT_PREFIX = "model.diffusion_model."
CONTROL_DIT_PREFIX = "model.control_model.diffusion_model."


def check_sat_dit(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Size],
    branch: str,
    *,
    source: Path,
    fix: str,
    prefix: str,
) -> None:
    """Refuse a SAT tensor whose shape differs from the model's before `convert_dit` splits or copies any.

    The file's tensors are views of a memory-mapped file; converting one (the adaLN concatenation) or
    casting it materialises it, so every tensor the model expects is checked here first, and a fused one
    it does not expect (another layer's qkv or adaLN) is refused as unexpected.
    """
    wanted = sat_dit_shapes(expected, branch)
    check_shapes(wanted, tensors, source=source, fix=fix, prefix=prefix)
    surplus = sorted(prefix + key for key in tensors if is_fused(key) and key not in wanted)
    if surplus:
        shown = ", ".join(surplus[:5]) + (f" (and {len(surplus) - 5} more)" if len(surplus) > 5 else "")
        raise CheckpointError(
            f"{source} does not fit the model: {len(surplus)} unexpected key(s): {shown}. {fix}"
        )


def load_control_dit(layout: ReleaseLayout, config: DiTConfig, *, device, dtype: torch.dtype) -> ControlDiT:
    """Main CogVideoX-2b transformer from transformer/<latest>, control branch from diffusion/<latest>."""
    main_fix = redownload_hint(layout.dit_file.parents[1])
    control_fix = redownload_hint(layout.control_file.parents[1])
    main_file = checkpoint_step_file(layout.dit_file.parents[1], main_fix)
    control_file = checkpoint_step_file(layout.control_file.parents[1], control_fix)
    with torch.device("meta"):
        model = ControlDiT(config)
    expected = expected_shapes(model)
    main_sat = strip_prefix(read_sat_checkpoint(main_file, "module", fix=main_fix), MAIN_DIT_PREFIX)
    check_sat_dit(main_sat, expected, "main", source=main_file, fix=main_fix, prefix=MAIN_DIT_PREFIX)
    control_module = read_sat_checkpoint(control_file, "module", fix=control_fix)
    # diffusion/1 may also carry copies of the main DiT, T5, VAE: only the control branch is read from it.
    control_sat = strip_prefix(control_module, CONTROL_DIT_PREFIX)
    check_sat_dit(
        control_sat, expected, "control", source=control_file, fix=control_fix, prefix=CONTROL_DIT_PREFIX
    )
    main, unknown_main = convert_dit(main_sat, "main")
    control, unknown_control = convert_dit(control_sat, "control")
    for source, part, unknown, fix, from_main_file in (
        (main_file, main, unknown_main, main_fix, True),
        (control_file, control, unknown_control, control_fix, False),
    ):
        wanted = {key: shape for key, shape in expected.items() if is_main_dit_key(key) == from_main_file}
        found = {
            **part,
            **{key: torch.empty(0) for key in unknown},
        }  # unknown SAT keys are reported as unexpected
        check_state_dict(wanted, found, source=source, fix=fix)
    tensors = {key: value.to(device=device, dtype=dtype) for key, value in {**main, **control}.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_vae(layout: ReleaseLayout, config: VAEConfig, *, device, dtype: torch.dtype):
    """The 3D VAE decoder from `vae/3d-vae.pt` (its `state_dict`; encoder and loss weights are skipped)."""
    fix = redownload_hint(layout.vae_file)
    sat = read_sat_checkpoint(layout.vae_file, "state_dict", fix=fix)
    tensors = convert_vae_decoder(sat, config.levels)
    with torch.device("meta"):
        vae = build_vae(config)
    check_state_dict(expected_shapes(vae), tensors, source=layout.vae_file, fix=fix)
    vae.load_state_dict(
        {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}, strict=True, assign=True
    )
    return vae.eval().requires_grad_(False)


VQ_COPY_PREFIX = "model.control_model.diffusion_model.semantic_conditioner.semantic_model.model."


def load_diffusion_semantic_decoder(
    layout: ReleaseLayout, config: SemanticDecoderConfig, *, device, dtype: torch.dtype
) -> SemanticDecoder:
    """The semantic decoder that stage 2 conditions on.

    The reference loads diffusion/<latest> over its whole engine after building it, so a copy
    of the tokenizer carried in that file wins over tokenizer/model.safetensors; without one,
    the tokenizer file is used.
    """
    fix = redownload_hint(layout.control_file.parents[1])
    control_file = checkpoint_step_file(layout.control_file.parents[1], fix)
    copy = {
        key: value
        for key, value in strip_prefix(
            read_sat_checkpoint(control_file, "module", fix=fix), VQ_COPY_PREFIX
        ).items()
        if is_used_tokenizer_key(key)
    }
    if not copy:
        return load_semantic_decoder(layout.tokenizer_file, config, device=device, dtype=dtype)
    with torch.device("meta"):
        decoder = SemanticDecoder(config)
    check_state_dict(expected_shapes(decoder), copy, source=control_file, fix=fix)
    decoder.load_state_dict(
        {k: v.to(device=device, dtype=dtype) for k, v in copy.items()}, strict=True, assign=True
    )
    return decoder.eval().requires_grad_(False)
