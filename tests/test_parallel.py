"""One video over several ranks (engine/generation/parallel) on the CPU: gloo processes started by the
engine's own launcher render the tiny model's stage 2 as the single process does, through the code the
GPUs run (only the backend differs); a rank killed mid-job fails it by name and the next job works; no
helper outlives its group."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.generation.lengths import plan_length, rules_for
from engine.generation.parallel.group import RankLost
from engine.generation.parallel.network import duplicate_single_rows
from engine.generation.parallel.plan import BadParallel, ParallelPlan, device_groups, parse_parallel
from engine.generation.parallel.ranks import parallel_pipeline
from engine.generation.pipeline import Pipeline
from engine.models.control_dit import ControlDiT
from engine.specs import TINY
from engine.weights.tiny import randomise

SEED, STEPS = 3, 3


def test_parallel_values_parse_and_bad_ones_are_refused_in_one_line():
    assert parse_parallel("4") == ParallelPlan(2, 2)
    assert parse_parallel("3") == ParallelPlan(1, 3)
    assert parse_parallel("2") == ParallelPlan(2, 1)
    assert parse_parallel("cfg=2,seq=3") == ParallelPlan(2, 3) and parse_parallel("seq=5").size == 5
    for bad, words in [
        ("1", "2 or more"),
        ("cfg=3", "cfg is 1 or 2"),
        ("cfg=1", "one device"),
        ("two", "not a split"),
        ("cfg=2,cfg=2", "not a split"),
    ]:
        with pytest.raises(BadParallel, match=words):
            parse_parallel(bad)
    with pytest.raises(BadParallel, match="72 video tokens, too few for 73 sequence ranks"):
        ParallelPlan(1, 73).check(TINY)
    assert device_groups(ParallelPlan(2, 1), ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]) == [
        ["cuda:0", "cuda:1"],
        ["cuda:2", "cuda:3"],
    ]
    with pytest.raises(BadParallel, match="do not split into groups of 4"):
        device_groups(ParallelPlan(2, 2), ["cuda:0", "cuda:1", "cuda:2"])


@torch.no_grad()
def test_a_guidance_half_alone_gives_the_pairs_bits_only_with_two_row_linears():
    network = randomise(ControlDiT(replace(TINY.dit)), torch.Generator().manual_seed(0)).eval()
    g = torch.Generator().manual_seed(1)
    frames, channels, height, width = TINY.latent_shape(3)
    latents = torch.randn(2, frames, channels, height, width, generator=g)
    text = torch.randn(2, 7, TINY.dit.text_dim, generator=g)
    semantic = torch.randn(1, frames, channels, height, width, generator=g)
    timesteps = torch.tensor([500.0, 500.0])
    pair = network(latents, text, timesteps, semantic)
    alone = network(latents[1:], text[1:], timesteps[1:], semantic)
    assert not torch.equal(pair[1:], alone)  # one row takes other kernels than two: why the rows
    duplicate_single_rows(network)
    assert torch.equal(pair[1:], network(latents[1:], text[1:], timesteps[1:], semantic))
    assert torch.equal(pair, network(latents, text, timesteps, semantic))  # batch 2 untouched


@pytest.fixture(scope="module")
def job(home):
    """A two-chunk tiny job's stage-2 inputs and its single-process latents."""
    single = Pipeline.for_model("tiny", home, device=torch.device("cpu"))
    stage = single.stage2()
    plan = plan_length(rules_for("tiny"), 9 + 8, overlap=1)
    codes = torch.randint(0, TINY.llm.codebook_size, (plan.segments * 11,), generator=torch.Generator())
    text = stage.encode_prompt("a red kite over the sea")
    reference = list(stage.render_chunks(text, codes, plan, seed=SEED, steps=STEPS))
    return text, codes, plan, reference


def start(home, tmp_path, split: str):
    plan = parse_parallel(split)
    return parallel_pipeline("tiny", home, ["cpu"] * plan.size, plan, tmp_path, memory="resident")


def render(pipeline, job, **kwargs) -> list[torch.Tensor]:
    text, codes, plan, _ = job
    return list(pipeline.stage2().render_chunks(text, codes, plan, seed=SEED, steps=STEPS, **kwargs))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_guidance_parallel_equals_the_single_process_bit_for_bit_and_survives_a_lost_rank(
    home, tmp_path, job
):
    pipeline = start(home, tmp_path, "cfg=2")
    try:
        chunks = render(pipeline, job)
        assert len(chunks) == 2 and all(torch.equal(a, b) for a, b in zip(job[3], chunks, strict=True))
        (helper,) = pipeline.ranks.pids()

        def kill_at_step_two(index: int, step: int, total: int) -> None:
            if (index, step) == (0, 2):
                os.kill(helper, signal.SIGKILL)

        with pytest.raises(
            RankLost, match=r"rank 1 of the parallel group \(cpu\) died mid-job \(killed by signal 9\)"
        ):
            render(pipeline, job, on_step=kill_at_step_two)
        assert gone(helper)
        again = render(pipeline, job)  # the group is rebuilt with a new helper
        (new_helper,) = pipeline.ranks.pids()
        assert new_helper != helper and all(torch.equal(a, b) for a, b in zip(job[3], again, strict=True))
    finally:
        pipeline.close()
    deadline = time.monotonic() + 5
    while not gone(new_helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(new_helper)  # no orphan
    assert not list(tmp_path.glob("parallel-*"))  # the rendezvous file is removed


@pytest.mark.parametrize("split", ["seq=2", "cfg=2,seq=2"])
def test_sequence_parallel_matches_the_single_process_within_1e_5(home, tmp_path, job, split):
    pipeline = start(home, tmp_path, split)
    try:
        chunks = render(pipeline, job)
        # a cancel at rank 0 stops every rank at the same step; the group then renders on
        calls = iter([False, False, True])
        with pytest.raises(Exception, match="stopped after 2 of 3"):
            render(pipeline, job, should_stop=lambda: next(calls))
        after = render(pipeline, job)
        helpers = pipeline.ranks.pids()
    finally:
        pipeline.close()
    for reference, got, later in zip(job[3], chunks, after, strict=True):
        scale = reference.abs().max()
        assert ((got - reference).abs().max() / scale) < 1e-5
        assert torch.equal(got, later)
    time.sleep(0.2)
    assert len(helpers) == parse_parallel(split).size - 1 and all(gone(pid) for pid in helpers)
