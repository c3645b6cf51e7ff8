"""Step caching (`cache` job parameter): off is the exact path bit for bit; on, it skips DiT calls and
says how many, in the progress events, the record, the TUI and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from engine import protocol as p
from engine.generation.job import JobSpec
from engine.generation.lengths import plan_length, rules_for
from engine.generation.outputs import save_tokens
from engine.generation.pipeline import Pipeline
from engine.generation.stage2 import SemanticWindows
from engine.models.dpm_sampler import DpmSolverSampler
from engine.models.step_cache import CacheCounts, StepCache, change_sums, relative_change
from engine.params import check_value, param
from engine.specs import get_spec
from engine.weights.layout import layout_for

TINY = get_spec("tiny")
RULES = rules_for("tiny")
PROMPT = "A paper boat drifting down a rainy street."
TWO_CHUNKS = plan_length(RULES, None).clip_frames + plan_length(RULES, None).chunk_frames


@pytest.fixture(scope="module")
def stage2(pipeline):
    return pipeline.stage2()


@pytest.fixture(scope="module")
def text(stage2):
    return stage2.encode_prompt(PROMPT)


def codes_for(plan, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.llm.codebook_size, (plan.segments * 11,), generator=generator)


class BlockRows:
    """Counts the batch rows that go through the first main block: the DiT calls that really ran."""

    def __init__(self, network):
        self.rows = 0
        self.handle = network.main.transformer_blocks[0].register_forward_pre_hook(
            self.seen, with_kwargs=True
        )

    def seen(self, module, args, kwargs) -> None:
        self.rows += kwargs["hidden_states"].shape[0]

    def __enter__(self) -> BlockRows:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_threshold_zero_is_the_exact_path_bit_for_bit(stage2, text):
    """Stage 2 of a one-clip job with cache 0 equals the sampler driving the network's own forward, and
    so does a threshold too small to ever skip (the cache's compute path is forward's arithmetic)."""
    plan = plan_length(RULES, None)
    codes = codes_for(plan)
    network = stage2.network
    with torch.no_grad():
        features = SemanticWindows(stage2.decoder, codes, TINY.llm).window(*plan.latent_range(0))
        semantic = network.semantic_conditioner(features)
        generator = torch.Generator().manual_seed(7)
        noise = torch.randn((1, *TINY.latent_shape(plan.window)), generator=generator)
        exact = DpmSolverSampler().sample(
            lambda x, t: network(x, text, t, semantic), noise, 4, generator=generator
        )
    off_counts, tiny_counts = CacheCounts(), CacheCounts()
    (off,) = stage2.render_chunks(text, codes, plan, seed=7, steps=4, cache=0.0, counts=off_counts)
    with BlockRows(network) as ran:
        (never,) = stage2.render_chunks(text, codes, plan, seed=7, steps=4, cache=1e-9, counts=tiny_counts)
    assert torch.equal(off, exact)
    assert torch.equal(never, exact)
    assert off_counts == tiny_counts == CacheCounts(calls=8, skipped=0) and ran.rows == 8


def test_a_large_threshold_skips_calls_with_a_fresh_cache_per_chunk(stage2, text):
    steps, plan = 6, plan_length(RULES, TWO_CHUNKS)
    counts, per_chunk = CacheCounts(), []
    with BlockRows(stage2.network) as ran:
        for _ in stage2.render_chunks(
            text, codes_for(plan), plan, seed=7, steps=steps, cache=0.5, counts=counts
        ):
            per_chunk.append(counts.skipped - sum(per_chunk))
    asked = 2 * steps * plan.chunks  # [uncond, cond] at every step of every chunk
    assert plan.chunks == 2 and counts.calls == asked and 0 < counts.skipped < asked
    assert ran.rows == asked - counts.skipped  # fewer calls went through the blocks
    # each chunk's cache is fresh and runs its first and last steps: at most steps - 2 skipped per branch
    assert all(0 < skipped <= 2 * (steps - 2) for skipped in per_chunk)


def test_the_skips_reach_the_progress_events_the_record_and_the_sidecar(pipeline, tmp_path):
    steps = 6
    tokens = tmp_path / "tokens.npy"  # stage 2 only: saved tokens, as a re-run of the diffusion uses
    save_tokens(codes_for(plan_length(RULES, None)).numpy(), tokens)
    job = JobSpec(PROMPT, tmp_path / "cached.mp4", steps=steps, cache=0.5, tokens=tokens)
    progress = []
    result = pipeline.run(job, on_progress=progress.append)
    assert result.dit_calls == 2 * steps and 0 < result.dit_calls_skipped <= 2 * (steps - 2)
    denoise = [e for e in progress if e.stage == "denoise"]
    skips = [e.cache_skips for e in denoise]
    assert skips == sorted(skips) and skips[0] == 0 and skips[-1] == result.dit_calls_skipped
    assert [e.dit_calls for e in denoise] == [2 * n for n in range(1, steps + 1)]
    assert progress[-1].cache_skips == result.dit_calls_skipped  # decode and write events carry it on
    (chunk,) = result.chunk_timings
    assert (chunk.dit_calls, chunk.dit_calls_skipped) == (2 * steps, result.dit_calls_skipped)
    record = json.loads(result.sidecar.read_text())
    assert record["job"]["cache"] == 0.5
    assert record["step_cache"] == {
        "threshold": 0.5,
        "dit_calls": 2 * steps,
        "dit_calls_skipped": result.dit_calls_skipped,
    }
    assert p.ChunkTiming(**record["chunk_timings"][0]).dit_calls_skipped == result.dit_calls_skipped


def test_first_and_last_calls_run_and_a_skip_reuses_the_branch_residual(stage2, text):
    network = stage2.network
    latents = torch.randn(
        2, *TINY.latent_shape(plan_length(RULES, None).window), generator=torch.manual_seed(1)
    )
    semantic = torch.randn_like(latents[:1])
    cache = StepCache(network, threshold=10.0, steps=4)
    calls = [
        (latents * (1 - step / 4), torch.full((2,), t)) for step, t in enumerate((900.0, 600.0, 300.0, 0.0))
    ]
    with torch.no_grad():
        with BlockRows(network) as ran:
            outputs = [cache(x, text, t, semantic) for x, t in calls]
        streams = network.embed(*calls[0][:1], text, calls[0][1], semantic)
        residual = network.run_blocks(streams)[0] - streams.video
        (x, t) = calls[1]
        streams = network.embed(x, text, t, semantic)
        reused = network.head(streams.video + residual, streams.temb, x.shape)
        exact = network(x, text, t, semantic)
    assert ran.rows == 4 and cache.counts == CacheCounts(calls=8, skipped=4)  # calls 0 and 3 ran
    torch.testing.assert_close(outputs[1], reused, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outputs[1], exact)  # a skip is an approximation, not the exact result


def test_each_cfg_branch_decides_for_itself(stage2, text):
    """A branch whose input moved past the threshold runs the blocks alone; the other reuses its residual."""
    network = stage2.network
    shape = TINY.latent_shape(plan_length(RULES, None).window)
    first = torch.randn(1, *shape, generator=torch.manual_seed(2))
    moved = torch.randn(1, *shape, generator=torch.manual_seed(3))
    semantic = torch.randn_like(first)
    t = torch.full((2,), 500.0)
    cache = StepCache(network, threshold=0.05, steps=3)
    with torch.no_grad():
        cache(torch.cat([first, first]), text, t, semantic)
        streams = network.embed(torch.cat([first, first]), text, t, semantic)
        residual = network.run_blocks(streams)[0] - streams.video
        with BlockRows(network) as ran:
            out = cache(torch.cat([first, moved]), text, t, semantic)  # uncond unchanged, cond moved
        streams = network.embed(torch.cat([first, moved]), text, t, semantic)
        kept = network.head(streams.video[:1] + residual[:1], streams.temb[:1], (1, *shape))
        ran_alone = network(moved, text[1:], t[1:], semantic)
    assert ran.rows == 1 and cache.counts == CacheCounts(calls=4, skipped=1)
    torch.testing.assert_close(out[:1], kept, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1:], ran_alone, rtol=1e-5, atol=1e-6)


def test_the_cache_runs_with_the_blocks_streamed_in_8_bit(home, stage2, text):
    """The low memory profile streams the blocks with hooks on their forward; the signal reads main block 0's
    norm outside that forward, so the cache has the block fetched first (else it reads empty weights)."""
    low = Pipeline(TINY, layout_for("tiny", home), device=torch.device("cpu"), memory="low").stage2()
    plan = plan_length(RULES, None)
    counts = CacheCounts()
    with BlockRows(low.network) as ran:
        (latents,) = low.render_chunks(text, codes_for(plan), plan, seed=7, steps=4, cache=1.0, counts=counts)
    assert counts.calls == 8 and counts.skipped > 0 and ran.rows == 8 - counts.skipped
    assert torch.isfinite(latents).all()


def test_a_branch_split_over_ranks_decides_on_all_its_tokens():
    """On a sequence group each rank holds some of a branch's tokens (uneven shards here): with the ranks'
    sums added up (`reduce_sums`), each computes the whole branch's relative change, the single process's
    up to summation order, and so takes its decision; on its own tokens alone each would decide apart."""
    previous = torch.randn(2, 40, 8, generator=torch.manual_seed(4))
    current = previous.clone()
    current[:, :15] += 0.3 * torch.randn(2, 15, 8, generator=torch.manual_seed(5))  # in the first shard
    shards = [slice(0, 21), slice(21, 40)]
    whole = relative_change(current, previous)
    sums = [change_sums(current[:, s], previous[:, s]) for s in shards]
    total = sums[0] + sums[1]
    assert total[:, 2].tolist() == [40 * 8, 40 * 8]  # the mean's denominator: every token of the branch
    alone = [relative_change(current[:, s], previous[:, s]) for s in shards]
    threshold = float(whole.max() + alone[0].min()) / 2  # the branch skips; the first shard alone would run
    assert float(alone[1].max()) == 0.0 and float(whole.max()) < threshold < float(alone[0].min())

    def decisions(own: slice, reduce_sums) -> list[bool]:
        cache = StepCache(None, threshold=threshold, steps=4, reduce_sums=reduce_sums)
        cache.decide(previous[:, own], fresh=True)
        return cache.decide(current[:, own]).tolist()

    for index, own in enumerate(shards):
        other = sums[1 - index]
        got = relative_change(current[:, own], previous[:, own], reduce_sums=lambda mine, o=other: mine + o)
        torch.testing.assert_close(got, whole, rtol=1e-6, atol=0)
        assert decisions(own, lambda mine, o=other: mine + o) == [False, False]
    assert decisions(shards[0], None) == [True, True]  # what the first rank alone would decide


def test_the_cache_parameter_is_checked_and_off_by_default():
    assert param("cache").default == 0.0 and "not measured" in param("cache").describe()
    assert check_value("cache", 0.2) == 0.2
    with pytest.raises(ValueError, match="cache must be between 0 and 10, got -0.1"):
        check_value("cache", -0.1)
    with pytest.raises(ValueError, match="threshold > 0"):
        StepCache(None, threshold=0.0, steps=4)  # 0 never builds a cache: the exact path needs none
    older = p.JobProgressEvent(
        seq=1, job_id="j", stage="denoise", step=1, total=2, chunk=1, chunks=1, rate=1.0, eta_s=None,
        frames_written=0, video_seconds=0.0, job_eta_s=None,
    )  # fmt: skip
    assert older.cache_skips == 0 and older.dit_calls == 0


async def test_the_queue_view_shows_the_skipped_calls():
    from landiff_tui.app import LanDiffApp

    from .harness import until
    from .tui_double import ScriptedLink, job

    link = ScriptedLink([job(2)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(120, 32)) as pilot:
        await until(pilot, lambda: len(app.query("QueueView")) == 1 and link.connected, what="the queue tab")
        queue = app.query_one("QueueView")
        link.publish("job_queued", job_id="j1", prompt="A fox.")
        link.publish("job_started", job_id="j1")
        fields = dict(
            job_id="j1", chunk=1, chunks=1, rate=9.0, eta_s=1.0, frames_written=0, video_seconds=0.0
        )
        link.publish("job_progress", stage="denoise", step=20, total=50, job_eta_s=3.0, **fields)
        await until(pilot, lambda: queue.last is not None, what="the first step")
        assert "step cache" not in str(queue.query_one("#live-info").render())  # cache off: nothing said
        link.publish(
            "job_progress",
            stage="denoise",
            step=21,
            total=50,
            job_eta_s=3.0,
            dit_calls=42,
            cache_skips=12,
            **fields,
        )
        info = "#live-info"
        await until(
            pilot, lambda: "skipped 12 of 42" in str(queue.query_one(info).render()), what="the skips"
        )
