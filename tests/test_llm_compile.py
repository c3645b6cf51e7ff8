"""The language model's decoding step through torch.compile (`--compile`, on by default with CUDA): the
eager step's draws, one graph for every window, a clean fallback, and at most 300 launches per step at the
release's block count."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

from engine.models import llm_sampler
from engine.models.configs import LLMConfig
from engine.models.llm_sampler import Decoder, decoding_inputs, sample_codes, segment_rows
from engine.models.rope import apply_rope, rope_1d

from .harness import ROOT
from .test_llm import TINY, params, random_lm, replay_without_a_sync, text_states

NO_GRAPH = "eager: the cpu device has no CUDA graphs"


def step_ops():
    spec = importlib.util.spec_from_file_location("step_ops", ROOT / "bench" / "step_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_real_rotation_turns_pairs_as_the_complex_product():
    """The form torch.compile gets (inductor writes no kernels for complex numbers) is the same rotation."""
    x = torch.randn(2, 7, 6, 16, generator=torch.Generator().manual_seed(0))
    cis = rope_1d(torch.arange(3, 10), 16)
    assert torch.allclose(apply_rope(x, torch.view_as_real(cis)), apply_rope(x, cis), rtol=0, atol=1e-6)
    half = x.bfloat16()
    assert torch.equal(apply_rope(half, torch.view_as_real(cis)), apply_rope(half, cis))


def test_the_compiled_step_draws_what_the_eager_step_draws_with_one_graph_for_every_window_and_video():
    """Three windows, the last one reaching the end of the video, then another model (the engine's next
    pipeline) and videos of other lengths: one compile for them all, timed."""
    torch._dynamo.reset()
    counters.clear()
    states = text_states()
    for seed, segments in ((0, 3), (1, 1), (1, 2)):
        model, knobs = random_lm(seed=seed), params(num_frames=segments * TINY.frames_per_segment)
        told: list[llm_sampler.Decoding] = []
        compiled = sample_codes(model, states, knobs, compiled=True, on_decoding=told.append)
        assert [decoding.how for decoding in told] == [f"{NO_GRAPH}; compiled: yes"]
        assert torch.equal(compiled, sample_codes(model, states, knobs)), segments
        assert told[0].compile_s > 0
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_a_step_that_fails_to_compile_stays_eager_and_says_why(monkeypatch):
    def no_compiler(gpt):
        def decode(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return decode

    monkeypatch.setattr(llm_sampler, "compiled_decode", no_compiler)
    model, states = random_lm(), text_states()
    knobs = params(num_frames=2 * TINY.frames_per_segment)
    told: list[llm_sampler.Decoding] = []
    codes = sample_codes(model, states, knobs, compiled=True, on_decoding=told.append)
    assert [decoding.how for decoding in told] == [f"{NO_GRAPH}; compiled: failed (no C++ compiler found)"]
    assert torch.equal(codes, sample_codes(model, states, knobs))  # the same draws, none made twice


def launches_per_step(num_blocks: int, compiled: bool) -> int:
    counter = step_ops()
    model = random_lm(replace(TINY, num_blocks=num_blocks)).cast_for_inference(torch.bfloat16)
    knobs = params()
    with torch.no_grad(), counter.kernel_profile():
        prefix, rules, generator = decoding_inputs(model, text_states(), knobs)
        decoder = Decoder(model, prefix, rules, knobs, generator, segment_rows(TINY), compiled=compiled)
        assert decoder.compiled == ("yes" if compiled else llm_sampler.NOT_COMPILED)
        decoder.step(decoder.rows(0))
        return sum(counter.launches(lambda: decoder.step(decoder.rows(1))).values())


def test_the_compiled_step_launches_at_most_300_ops_at_the_release_block_count():
    """bf16 on the CPU, counted as bench/step_ops.py counts (inductor's kernels, the matmuls and attention
    it leaves to aten, the draw's ops) at one and two blocks and carried to the release's 24: a block's
    launches do not depend on its width. Eager, a step launches ~770 there."""
    torch._dynamo.reset()
    one, two = launches_per_step(1, compiled=True), launches_per_step(2, compiled=True)
    blocks = LLMConfig().num_blocks
    at_release = one + (blocks - 1) * (two - one)
    assert at_release <= 300, f"{one} launches with one block, {two} with two: {at_release} with {blocks}"
    eager_one, eager_two = launches_per_step(1, compiled=False), launches_per_step(2, compiled=False)
    assert two - one < (eager_two - eager_one) / 2, "compiling fuses most of a block's launches"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU never captures a graph)")
def test_on_cuda_the_compiled_step_is_captured_and_replays_without_a_sync():
    from engine.models.llm_sampler import GRAPH, WindowSteps

    model, states = random_lm().cuda(), text_states().cuda()
    knobs = params(num_frames=3 * TINY.frames_per_segment)
    with torch.no_grad():
        prefix, rules, generator = decoding_inputs(model, states, knobs)
        decoder = Decoder(model, prefix, rules, knobs, generator, segment_rows(TINY), compiled=True)
        assert decoder.compiled == "yes"
        steps = WindowSteps(decoder, use_graph=True)
        replay_without_a_sync(decoder, steps)
        assert steps.how == GRAPH
    assert decoder.codes().numel() > 0
