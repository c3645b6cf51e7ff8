"""Stage-1 parity with the reference implementation's golden cases, through the release file layout.

Each case's weights are written out as the release stores them (llm/model.safetensors,
tokenizer/model.safetensors, a Hugging Face flan-T5 folder) and loaded by the same
loaders that load the real release; the models are sized from the case's config.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config

from engine.generation.text_encoder import load_t5_encoder
from engine.models.llm_sampler import SamplingParams, sample_codes
from engine.weights.layout import ReleaseLayout
from engine.weights.loading import load_semantic_decoder, load_semantic_lm

from .golden import (
    assert_close_relative,
    decoder_config,
    golden_cases,
    llm_config,
    load_pt,
    read_config,
    t5_sizes,
)

pytestmark = pytest.mark.golden

T5_PREFIX = "cond_model.text_encoder.text_encoder."
TOKENIZER_PREFIX = "tokenizer.tokenizer."


def case_dtype(config: dict) -> torch.dtype:
    return (
        torch.bfloat16 if "bf16" in str(config.get("dtype", config.get("fwd_dtype", ""))) else torch.float32
    )


def write_release_layout(case: Path, root: Path) -> ReleaseLayout:
    """Split an llm_sample case's state dict into the release's files."""
    layout = ReleaseLayout(root)
    tensors = load_file(str(case / "model.safetensors"))
    t5 = {key[len(T5_PREFIX) :]: value for key, value in tensors.items() if key.startswith(T5_PREFIX)}
    tokenizer = {
        key[len(TOKENIZER_PREFIX) :]: v for key, v in tensors.items() if key.startswith(TOKENIZER_PREFIX)
    }
    llm = {key: value for key, value in tensors.items() if not key.startswith((T5_PREFIX, TOKENIZER_PREFIX))}
    for path, part in ((layout.llm_file, llm), (layout.tokenizer_file, tokenizer)):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(part, str(path))
    sizes = t5_sizes(read_config(case)["knobs"]["t5"])
    attention_bias = t5["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    t5_config = T5Config(
        d_model=sizes["d_model"],
        d_ff=sizes["d_ff"],
        num_layers=sizes["layers"],
        num_heads=attention_bias.shape[1],
        d_kv=sizes["d_kv"],
        vocab_size=sizes["vocab"],
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=attention_bias.shape[0],
    )
    layout.flan_t5_dir.mkdir(parents=True)
    t5_config.to_json_file(str(layout.flan_t5_dir / "config.json"))
    save_file(t5, str(layout.flan_t5_dir / "model.safetensors"))
    return layout


@pytest.mark.parametrize("case", golden_cases("llm_sample_"))
def test_llm_sample_case(case: Path, tmp_path: Path):
    config = read_config(case)
    dtype = case_dtype(config)
    exact = dtype == torch.float32
    rel = 1e-5 if exact else 8e-2
    layout = write_release_layout(case, tmp_path)
    lm_config = llm_config(config)
    lm = load_semantic_lm(layout.llm_file, lm_config, device="cpu", dtype=dtype)
    t5 = load_t5_encoder(layout.flan_t5_dir, dtype=dtype, device="cpu")
    load_semantic_decoder(
        layout.tokenizer_file, decoder_config(config["tokenizer_knobs"]), device="cpu", dtype=dtype
    )
    inputs, outputs = load_pt(case, "input.pt"), load_pt(case, "output.pt")
    vocab = lm_config.vocab
    assert outputs["vocab"] == {
        "EOS": vocab.eos,
        "BOS": vocab.bos,
        "START_OF_IFrame": vocab.start_of_iframe,
        "END_OF_IFrame": vocab.end_of_iframe,
        "START_OF_PFrame": vocab.start_of_pframe,
        "END_OF_PFrame": vocab.end_of_pframe,
        "PAD": vocab.pad,
    }

    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        states = t5(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        states = states[mask][None]  # the reference drops padded positions
        embedding = lm.cond_model(states[0])
    assert_close_relative(embedding, outputs["cond_embedding"][0], rel, "text condition embedding")

    params = SamplingParams(
        cfg=float(inputs["cfg"]),
        temperature=float(inputs["temperature"]),
        top_k=inputs.get("top_k"),
        top_p=inputs.get("top_p"),
        motion_score=float(inputs["motion_score"].reshape(-1)[0]),
        num_frames=int(inputs["num_frames"]),
        seed=int(inputs["seed"]),
    )
    assert float(inputs["frames"].reshape(-1)[0]) == params.num_frames
    micro = {"frames": float(params.num_frames), "motion_score": params.motion_score}
    with torch.no_grad():
        prefix = lm.prefix_features(states, micro, params.guidance)
    assert_close_relative(prefix, outputs["prefill_features"], rel, "prefill features")

    golden_codes = outputs["codes"].reshape(-1)
    steps = outputs["steps"]
    seen = []

    def compare(index: int, raw: torch.Tensor) -> None:
        assert_close_relative(raw, steps[index]["logits_raw"], rel, f"raw logits at step {index}")
        seen.append(index)

    fed = fed_ids(lm, steps)
    forced = sample_codes(lm, states, params, forced_ids=fed, on_logits=compare)
    assert seen == list(range(len(steps))), "one transformer call per golden step"
    assert torch.equal(forced, golden_codes.clamp(0, lm_config.codebook_size - 1))
    if exact:
        # The reference drew from the CPU generator seeded with the case's seed: replaying gives its codes.
        assert sample_codes(lm, states, params).tolist() == golden_codes.tolist()


def fed_ids(lm, steps: list[dict]) -> list[int]:
    """The id the reference fed after each step: the code-embedding row equal to the next step's input
    (the output codes are clamped, so a special id drawn at a visual position is not in them). The last
    step feeds nothing: -1 leaves it to the sampler (its id is forced by the layout anyway)."""
    table = lm.visual_embedding_model.tok_emb_code.weight
    ids = []
    for after in steps[1:]:
        row = after["x_in"][0].reshape(-1, table.shape[1])[-1].to(table.dtype)
        matches = (table == row).all(dim=1).nonzero().flatten().tolist()
        assert len(matches) == 1, f"the input of a step matches {len(matches)} embedding rows"
        ids.append(matches[0])
    return [*ids, -1]


@pytest.mark.parametrize("case", golden_cases("tokenizer_decode_"))
def test_tokenizer_decode_case(case: Path, tmp_path: Path):
    config = read_config(case)
    dtype = case_dtype(config)
    rel = 1e-5 if dtype == torch.float32 else 5e-2
    layout = ReleaseLayout(tmp_path)
    layout.tokenizer_file.parent.mkdir(parents=True)
    layout.tokenizer_file.write_bytes((case / "model.safetensors").read_bytes())
    decoder = load_semantic_decoder(
        layout.tokenizer_file, decoder_config(config["knobs"]), device="cpu", dtype=dtype
    )
    inputs, outputs = load_pt(case, "input.pt"), load_pt(case, "output.pt")
    codes = inputs["indices"].reshape(1, -1)
    with torch.no_grad():
        latents = decoder.codes_to_latents(codes)
        features = decoder(codes, int(inputs["forward_T"]))
    assert_close_relative(latents.transpose(1, 2)[:, :, None], outputs["latent"], rel, "codebook latents")
    expected = outputs["features"]
    if expected.ndim == 4:  # the reference drops the frame axis when it decodes a single frame
        expected = expected[:, None]
    assert_close_relative(features, expected, rel, "semantic features")
