"""SwissArmyTransformer checkpoint keys -> our ControlDiT keys.

The release stores the CogVideoX-2b transformer and LanDiff's control branch in SAT
layout (fused qkv, one 12-way adaLN projection per layer, mixins). This maps each SAT
tensor of one `DiffusionTransformer` (keys relative to `diffusion_model.`) to the
diffusers-based modules of `engine.models.control_dit`, splitting fused tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import cast

import torch

# SAT's 12 adaLN chunks per layer, in order: shift/scale/gate for video attention, video MLP,
# text attention, text MLP. diffusers' norm1 takes the attention ones, norm2 the MLP ones.
NORM1_CHUNKS = (0, 1, 2, 6, 7, 8)
NORM2_CHUNKS = (3, 4, 5, 9, 10, 11)

# Stored by SAT but recomputed or unused here: the fixed sin-cos table, the control
# branch's own final norm (computed and discarded by the reference) and its VQ copy.
IGNORED = (
    re.compile(r"mixins\.pos_embed\.pos_embedding$"),
    re.compile(r"semantic_conditioner\.semantic_model\."),
)
CONTROL_IGNORED = (re.compile(r"transformer\.final_layernorm\."),)

RENAMES = (
    (r"time_embed\.0\.", "time_embedding.linear_1."),
    (r"time_embed\.2\.", "time_embedding.linear_2."),
    (r"mixins\.patch_embed\.", "patch_embed."),
    (r"mixins\.adaln_layer\.query_layernorm_list\.(\d+)\.", r"transformer_blocks.\1.attn1.norm_q."),
    (r"mixins\.adaln_layer\.key_layernorm_list\.(\d+)\.", r"transformer_blocks.\1.attn1.norm_k."),
    (r"transformer\.layers\.(\d+)\.input_layernorm\.", r"transformer_blocks.\1.norm1.norm."),
    (r"transformer\.layers\.(\d+)\.post_attention_layernorm\.", r"transformer_blocks.\1.norm2.norm."),
    (r"transformer\.layers\.(\d+)\.attention\.dense\.", r"transformer_blocks.\1.attn1.to_out.0."),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_h_to_4h\.", r"transformer_blocks.\1.ff.net.0.proj."),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_4h_to_h\.", r"transformer_blocks.\1.ff.net.2."),
)
MAIN_HEAD = (
    (r"transformer\.final_layernorm\.", "norm_final."),
    (r"mixins\.final_layer\.norm_final\.", "norm_out.norm."),
    (r"mixins\.final_layer\.linear\.", "proj_out."),
    (r"mixins\.final_layer\.adaLN_modulation\.1\.", "norm_out.linear."),
)
CONTROL_OWN = (
    (r"mixins\.adaln_layer\.zero_linears\.", "zero_linears."),
    (r"semantic_conditioner\.", "semantic_conditioner."),
)
QKV = re.compile(r"transformer\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")
ADALN = re.compile(r"mixins\.adaln_layer\.adaLN_modulations\.(\d+)\.1\.(weight|bias)$")


def is_fused(key: str) -> bool:
    """Whether `convert_dit` splits (qkv) or regroups (adaLN: a concatenation, a copy) this SAT tensor."""
    return bool(QKV.match(key) or ADALN.match(key))


def sat_dit_shapes(expected: Mapping[str, torch.Size], branch: str) -> dict[str, torch.Size]:
    """The SAT keys and shapes of one branch that `convert_dit` turns into `expected` (our keys and shapes).

    Computed on the meta device, so a loader can check a file's tensors before converting any.
    """
    meta = {key: torch.empty(shape, device="meta") for key, shape in expected.items()}
    return {key: value.shape for key, value in sat_dit_from_ours(meta, branch).items()}


def convert_dit(tensors: dict[str, torch.Tensor], branch: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SAT keys of one transformer (`branch` = "main" or "control") -> (our keys, SAT keys not understood).

    The adaLN tensors are concatenated (copied): check their shapes first (`sat_dit_shapes`).
    """
    assert branch in ("main", "control")
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    ignored = IGNORED + (CONTROL_IGNORED if branch == "control" else ())
    own = MAIN_HEAD if branch == "main" else CONTROL_OWN
    for key, value in tensors.items():
        if any(pattern.match(key) for pattern in ignored):
            continue
        if match := QKV.match(key):
            layer, kind = match.groups()
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                converted[f"{branch}.transformer_blocks.{layer}.attn1.{name}.{kind}"] = part
            continue
        if match := ADALN.match(key):
            layer, kind = match.groups()
            chunks = value.chunk(12, dim=0)
            for norm, picks in (("norm1", NORM1_CHUNKS), ("norm2", NORM2_CHUNKS)):
                part = torch.cat([chunks[i] for i in picks], dim=0)
                converted[f"{branch}.transformer_blocks.{layer}.{norm}.linear.{kind}"] = part
            continue
        for pattern, replacement in own:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key, count=1)] = value
                break
        else:
            for pattern, replacement in RENAMES:
                if re.match(pattern, key):
                    converted[f"{branch}." + re.sub(pattern, replacement, key, count=1)] = value
                    break
            else:
                unknown.append(key)
    return converted, unknown


VAE_RENAMES = (
    (r"decoder\.mid\.block_(\d)\.", lambda m: f"decoder.mid_block.resnets.{int(m.group(1)) - 1}."),
    (r"\.nin_shortcut\.", lambda m: ".conv_shortcut."),
    (r"\.upsample\.", lambda m: ".upsamplers.0."),
)
VAE_UP = re.compile(r"decoder\.up\.(\d+)\.block\.(\d+)\.|decoder\.up\.(\d+)\.")


def convert_vae_decoder(tensors: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """SAT 3D-VAE decoder keys (`decoder.*`) -> diffusers AutoencoderKLCogVideoX decoder keys.

    SAT numbers its up levels from the highest resolution (`up.0`, run last); diffusers
    numbers them in the order they run (`up_blocks.0` = SAT `up.{levels-1}`).
    """
    converted = {}
    for key, value in tensors.items():
        if not key.startswith("decoder."):
            continue

        def up_level(match: re.Match) -> str:
            if match.group(1) is not None:
                return f"decoder.up_blocks.{levels - 1 - int(match.group(1))}.resnets.{match.group(2)}."
            return f"decoder.up_blocks.{levels - 1 - int(match.group(3))}."

        new = VAE_UP.sub(up_level, key, count=1)
        for pattern, replacement in VAE_RENAMES:
            new = re.sub(pattern, replacement, new, count=1)
        converted[new] = value
    return converted


def sat_dit_from_ours(state: dict[str, torch.Tensor], branch: str) -> dict[str, torch.Tensor]:
    """The inverse of `convert_dit` for one branch: our ControlDiT tensors -> SAT keys.

    Used to write random weights in the release's layout (the `tiny` model); the sin-cos
    table and other tensors the loader ignores are not produced here.
    """
    inverse_renames = [(replacement, pattern) for pattern, replacement in RENAMES]
    own = MAIN_HEAD if branch == "main" else CONTROL_OWN
    sat: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    prefix = f"{branch}."
    for key, value in state.items():
        if match := re.match(
            r"(?:main\.|control\.)?transformer_blocks\.(\d+)\.(attn1\.to_[qkv]|norm[12]\.linear)\.(\w+)$", key
        ):
            if not key.startswith(prefix):
                continue
            layer, part, kind = match.groups()
            group = "qkv" if part.startswith("attn1") else "adaln"
            fused.setdefault((group, layer, kind), {})[part] = value
            continue
        if key.startswith(prefix):
            body = key[len(prefix) :]
            for ours, sat_pattern in inverse_renames:
                our_regex = "^" + re.escape(ours).replace(re.escape("\\1"), r"(\d+)")
                if m := re.match(our_regex, body):
                    sat_key = _fill(sat_pattern, m.groups()) + body[m.end() :]
                    sat[sat_key] = value
                    break
            else:
                raise KeyError(f"no SAT name for {key}")
        elif not key.startswith(("main.", "control.")):
            for sat_pattern, ours in own:
                if key.startswith(ours):
                    sat[_fill(sat_pattern, ()) + key[len(ours) :]] = value
                    break
    for (group, layer, kind), parts in fused.items():
        if group == "qkv":
            sat[f"transformer.layers.{layer}.attention.query_key_value.{kind}"] = torch.cat(
                [parts["attn1.to_q"], parts["attn1.to_k"], parts["attn1.to_v"]]
            )
        else:
            chunks: list[torch.Tensor | None] = [None] * 12
            for norm, picks in (("norm1.linear", NORM1_CHUNKS), ("norm2.linear", NORM2_CHUNKS)):
                for pick, chunk in zip(picks, parts[norm].chunk(6), strict=True):
                    chunks[pick] = chunk
            # the two norms' picks cover all 12 chunks
            sat[f"mixins.adaln_layer.adaLN_modulations.{layer}.1.{kind}"] = torch.cat(
                cast("list[torch.Tensor]", chunks)
            )
    return sat


def _fill(pattern: str, groups: tuple) -> str:
    """A SAT regex prefix such as r"transformer\\.layers\\.(\\d+)\\.mlp\\." with its groups filled in."""
    text = pattern
    for group in groups:
        text = text.replace(r"(\d+)", group, 1)
    return text.replace("\\", "")


def sat_vae_decoder_from_ours(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """The inverse of `convert_vae_decoder`: diffusers decoder tensors -> SAT `decoder.*` keys."""
    sat = {}
    for key, value in state.items():
        if not key.startswith("decoder."):
            continue
        new = re.sub(
            r"^decoder\.mid_block\.resnets\.(\d)\.",
            lambda m: f"decoder.mid.block_{int(m.group(1)) + 1}.",
            key,
        )
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.",
            new,
        )
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.",
            new,
        )
        sat[new.replace(".conv_shortcut.", ".nin_shortcut.")] = value
    return sat
