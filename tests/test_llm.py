"""Stage-1 language model: layout, sampling rules, cache, determinism, checkpoint keys, loading errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

from engine.models.configs import LLMConfig
from engine.models.llm import SemanticLM
from engine.models.llm_sampler import (
    PROGRESS_EVERY,
    SamplingCancelled,
    SamplingParams,
    nucleus,
    sample_codes,
)
from engine.models.token_layout import codes_per_video, token_layout
from engine.weights.checkpoints import CheckpointError
from engine.weights.loading import load_semantic_lm

from .refkeys import refkeys_or_skip

TINY = LLMConfig(
    hidden_dim=32,
    num_heads=4,
    mlp_dim=64,
    num_blocks=2,
    codebook_size=16,
    iframe_tokens=4,
    pframe_tokens=2,
    frames_per_segment=3,
    micro_frequency_dim=16,
    micro_hidden_dim=16,
    text_dim=8,
    max_text_tokens=16,
    rope_max_len=512,
)


def random_lm(config: LLMConfig = TINY, seed: int = 0) -> SemanticLM:
    torch.manual_seed(seed)
    model = SemanticLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    return model.eval()


def text_states(length: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, length, TINY.text_dim, generator=torch.Generator().manual_seed(seed))


def params(**overrides) -> SamplingParams:
    return replace(SamplingParams(num_frames=TINY.frames_per_segment, cfg=3.0, seed=7), **overrides)


def test_release_layout_counts_match_the_reference():
    config = LLMConfig()
    steps = token_layout(config, 13)
    assert len(steps) == 1244
    assert codes_per_video(config, 13) == 1218
    vocab = config.vocab
    assert steps[330].forced == vocab.end_of_iframe
    assert steps[331].forced == vocab.start_of_pframe and steps[331].allowed == (vocab.start_of_pframe,)
    assert steps[406].forced == vocab.end_of_pframe
    assert steps[-1].forced == vocab.eos and steps[-1].allowed is None
    two = token_layout(config, 26)
    assert len(two) == 2 * 1244  # the second segment opens with a forced START_OF_IFrame
    assert two[1243].allowed == (vocab.start_of_iframe,) and two[1243].forced == vocab.start_of_iframe
    assert two[-1].allowed == (vocab.eos,)
    assert codes_per_video(config, 26) == 2 * 1218


def test_cached_sampling_equals_uncached_recomputation():
    model, states = random_lm(), text_states()
    cached_logits, plain_logits = [], []
    cached = sample_codes(model, states, params(), on_logits=lambda i, raw: cached_logits.append(raw))
    plain = sample_codes(
        model, states, params(), use_cache=False, on_logits=lambda i, raw: plain_logits.append(raw)
    )
    assert torch.equal(cached, plain)
    for a, b in zip(cached_logits, plain_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_same_seed_same_tokens_and_other_seed_differs():
    model, states = random_lm(), text_states()
    first = sample_codes(model, states, params(seed=11))
    assert torch.equal(first, sample_codes(model, states, params(seed=11)))
    others = [sample_codes(model, states, params(seed=s)) for s in (12, 13, 14)]
    assert any(not torch.equal(first, other) for other in others)
    assert first.shape == (codes_per_video(TINY, TINY.frames_per_segment),)
    assert int(first.min()) >= 0 and int(first.max()) < TINY.codebook_size


def test_more_frames_means_more_segments():
    model, states = random_lm(), text_states()
    codes = sample_codes(model, states, params(num_frames=2 * TINY.frames_per_segment))
    assert codes.shape == (2 * codes_per_video(TINY, TINY.frames_per_segment),)


def test_guidance_off_runs_a_single_branch():
    model, states = random_lm(), text_states()
    batches = []
    sample_codes(model, states, params(cfg=1.0), on_logits=lambda i, raw: batches.append(raw.shape[0]))
    assert set(batches) == {1}
    sample_codes(model, states, params(cfg=2.0), on_logits=lambda i, raw: batches.append(raw.shape[0]))
    assert batches[-1] == 2


def test_top_k_one_is_greedy_on_guided_logits():
    model, states = random_lm(), text_states()
    guided = []

    def keep(i, raw):
        cond, uncond = raw.chunk(2)
        guided.append(uncond + 3.0 * (cond - uncond))

    codes = sample_codes(model, states, params(top_k=1), on_logits=keep)
    steps = token_layout(TINY, TINY.frames_per_segment)
    argmaxes = [int(g.argmax()) for g, step in zip(guided, steps, strict=True) if step.is_code]
    assert codes.tolist() == [min(a, TINY.codebook_size - 1) for a in argmaxes]


def test_nucleus_keeps_the_token_that_crosses_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = nucleus(probs, 0.7)
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(nucleus(probs, 1.0), probs)


def test_progress_and_cancellation():
    model, states = random_lm(), text_states()
    seen = []
    frames = 3 * TINY.frames_per_segment
    sample_codes(
        model, states, params(num_frames=frames), on_token=lambda done, total: seen.append((done, total))
    )
    total = len(token_layout(TINY, frames))
    every = PROGRESS_EVERY
    assert seen == [(done, total) for done in range(every, total, every)] + [(total, total)]
    calls = iter(range(100))
    with pytest.raises(SamplingCancelled):
        sample_codes(model, states, params(), should_stop=lambda: next(calls) >= 3)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"cfg": -0.5}, "cfg"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"num_frames": 4}, "num_frames"),
        ({"num_frames": 0}, "num_frames"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_name_the_parameter_and_range(overrides, named):
    with pytest.raises(ValueError, match=named) as error:
        params(**overrides).validate(TINY)
    assert any(word in str(error.value) for word in (">", "between", "multiple"))


def test_full_size_keys_and_shapes_match_the_release_listing():
    expected = refkeys_or_skip("llm_model.safetensors.txt")
    with torch.device("meta"):
        model = SemanticLM(LLMConfig())
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == expected


def write_llm_file(
    path: Path, model: SemanticLM, drop: str | None = None, extra: str | None = None, reshape=None
):
    tensors = {key: value.contiguous() for key, value in model.state_dict().items()}
    if drop:
        del tensors[drop]
    if extra:
        tensors[extra] = torch.zeros(2)
    if reshape:
        tensors[reshape] = torch.zeros(3, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def test_loader_round_trip_keeps_norms_and_head_in_float32(tmp_path):
    model = random_lm()
    path = write_llm_file(tmp_path / "llm" / "model.safetensors", model)
    loaded = load_semantic_lm(path, TINY, device="cpu", dtype=torch.bfloat16)
    assert loaded.transformer.blocks[0].wqkv.weight.dtype == torch.bfloat16
    assert loaded.transformer.blocks[0].norm0.weight.dtype == torch.float32
    assert loaded.transformer.head.weight.dtype == torch.float32
    assert not any(p.is_meta for p in loaded.parameters())
    full = load_semantic_lm(path, TINY, device="cpu", dtype=torch.float32)
    states = text_states()
    assert torch.equal(sample_codes(full, states, params()), sample_codes(model, states, params()))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"drop": "transformer.head.weight"}, ["missing", "transformer.head.weight"]),
        ({"extra": "transformer.surprise"}, ["unexpected", "transformer.surprise"]),
        ({"reshape": "transformer.layer_norm.weight"}, ["shape", "transformer.layer_norm.weight"]),
    ],
)
def test_loader_errors_name_the_file_the_key_and_the_fix(tmp_path, change, words):
    path = write_llm_file(tmp_path / "llm" / "model.safetensors", random_lm(), **change)
    with pytest.raises(CheckpointError) as error:
        load_semantic_lm(path, TINY, device="cpu", dtype=torch.float32)
    message = str(error.value)
    for word in [str(path), "Re-download", *words]:
        assert word in message


def test_loader_reports_a_missing_or_corrupt_file(tmp_path):
    path = tmp_path / "llm" / "model.safetensors"
    with pytest.raises(CheckpointError, match="not found"):
        load_semantic_lm(path, TINY, device="cpu", dtype=torch.float32)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_semantic_lm(path, TINY, device="cpu", dtype=torch.float32)


# aten ops whose result decides a host value: each makes the host wait for the device (a CUDA graph refuses)
HOST_READS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "is_nonzero",
}


class HostReads(TorchDispatchMode):
    """Counts, at the dispatcher, the ops that read device data back to the host: what Python-level
    counting misses (`table[step]` with a 0-d tensor index reads `step` in C++), device-to-host copies too."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        result = func(*args, **kwargs)
        if name in HOST_READS or (name in ("_to_copy", "copy_") and to_host(args, result)):
            self.seen.append(name)
        return result


def to_host(args, result) -> bool:
    source = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else args[0]
    return source.device.type not in ("cpu", "meta") and result.device.type == "cpu"


def test_the_decoding_loop_reads_nothing_back_to_the_host_per_token():
    """Counted at the dispatcher over a one- and a three-segment video: what set-up reads may stay, but
    not one read more for three times the tokens (was: 4 per token, ~4,980 per clip at full size)."""
    model, states = random_lm(), text_states()
    counts = []
    for segments in (1, 3):
        with HostReads() as reads:
            sample_codes(model, states, params(num_frames=segments * TINY.frames_per_segment), on_token=print)
        counts.append(reads.seen)
    assert counts[0] == counts[1], f"host reads: {len(counts[0])} for 1 segment, {len(counts[1])} for 3"


def test_the_decoding_step_runs_on_the_meta_device():
    """The step has no data-dependent op: on the meta device (shapes only) any read of a value raises."""
    from engine.models.llm_sampler import Decoder, StepRules

    with torch.device("meta"):
        model = SemanticLM(TINY).eval()
    knobs = params(num_frames=TINY.frames_per_segment)
    states = torch.empty(1, 5, TINY.text_dim, device="meta")
    with torch.no_grad():
        prefix = model.prefix_features(states, {"frames": 3.0, "motion_score": 0.1}, knobs.guidance)
        rules = StepRules(token_layout(TINY, knobs.num_frames), TINY.vocab.size, torch.device("meta"))
        decoder = Decoder(model, prefix, rules, knobs, None)
        for _ in range(3):
            decoder.step()
    assert decoder.raw.device.type == "meta" and decoder.raw.shape == (2, TINY.vocab.size)


def test_the_device_step_rules_give_the_reference_distribution_at_every_step():
    """StepRules computes on the device what next_token_probs computes per step on the host."""
    from engine.models.llm_sampler import StepRules, next_token_probs

    steps = token_layout(TINY, 2 * TINY.frames_per_segment)
    rules = StepRules(steps, TINY.vocab.size, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for top in ({}, {"top_k": 5}, {"top_p": 0.6}):
        knobs = params(temperature=0.7, **top)
        for index, step in enumerate(steps):
            logits = torch.randn(1, TINY.vocab.size, generator=generator)
            expected = next_token_probs(logits, step, knobs)
            assert torch.equal(rules.probs(logits, torch.tensor(index), knobs), expected), (index, top)


def test_how_the_tokens_were_decoded_is_told_once():
    model, states = random_lm(), text_states()
    told: dict[str, list[str]] = {}
    for name, options in {
        "plain": {},
        "no graph": {"use_graph": False},
        "no cache": {"use_cache": False},
    }.items():
        told[name] = []
        sample_codes(model, states, params(), on_decoding=lambda d, n=name: told[n].append(d.how), **options)
    assert told == {
        "plain": ["eager: the cpu device has no CUDA graphs"],
        "no graph": ["eager: asked for (use_graph=False)"],
        "no cache": ["eager: without a KV cache (use_cache=False)"],
    }


def test_a_step_attends_over_the_rows_written_so_far_in_whole_segments_not_the_whole_video():
    """Each step of a ten-segment video reads the cache rows up to its own position, rounded up to a
    whole segment's rows (a CUDA graph per size): its first segment costs what a one-segment video's does
    (was: every step read the whole video's cache, so stage 1 grew with the square of the length)."""
    from engine.models.llm_sampler import segment_rows

    model, states = random_lm(), text_states()
    window = segment_rows(TINY)

    def rows_read(segments: int) -> tuple[int, list[int]]:
        with AttendedRows() as attended:
            sample_codes(model, states, params(num_frames=segments * TINY.frames_per_segment))
        prefix = attended.rows[0]  # the prefill attends over the prefix alone
        return prefix, attended.rows[TINY.num_blocks :: TINY.num_blocks]  # each step's first block

    prefix, one = rows_read(1)
    _, ten = rows_read(10)
    assert len(one) == window - 1 and len(ten) == 10 * window - 1  # the last token feeds nothing
    for steps in (one, ten):
        for index, rows in enumerate(steps):
            needed = prefix + index + 1  # every row written so far, its own included
            assert needed <= rows < needed + window, (index, rows, needed)
    assert len(set(ten)) == -(-(prefix + len(ten) + 1) // window)  # one size per window reached


class AttendedRows(TorchDispatchMode):
    """The key length of every attention call (how many cache rows a step reads)."""

    def __init__(self):
        super().__init__()
        self.rows: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func._schema.name:
            self.rows.append(args[1].shape[-2])
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU never captures a graph)")
def test_on_cuda_the_captured_steps_replay_without_a_sync_and_draw_what_the_eager_step_draws():
    """Set-up may sync (the prefix, the rules' tables, each window's capture); the replayed steps may not."""
    from engine.models.llm_sampler import GRAPH, Decoder, WindowSteps, decoding_inputs, segment_rows

    model, states = random_lm().cuda(), text_states().cuda()
    knobs = params(num_frames=3 * TINY.frames_per_segment)
    eager = sample_codes(model, states, knobs, use_graph=False)
    with torch.no_grad():
        prefix, rules, generator = decoding_inputs(model, states, knobs)
        decoder = Decoder(model, prefix, rules, knobs, generator, window=segment_rows(TINY))
        steps = WindowSteps(decoder, use_graph=True)
        replay_without_a_sync(decoder, steps)
        assert steps.how == GRAPH and len(steps.steps) >= 3
    assert torch.equal(decoder.codes(), eager)


def replay_without_a_sync(decoder, steps) -> None:
    """Capture each window's graph at its first step, then decode every token by replaying them, with a
    host synchronisation inside the replays raising (CUDA's sync debug mode)."""
    total = len(decoder.rules.feed)
    for index in range(total - 1):
        rows = decoder.rows(index)
        if rows not in steps.steps:
            steps.steps[rows] = steps.prepare(index)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in range(total - 1):
            steps.advance(index)
        decoder.draw()
    finally:
        torch.cuda.set_sync_debug_mode("default")
