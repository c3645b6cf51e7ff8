"""One video over several ranks (engine/generation/parallel) on the CPU: gloo processes started by the
engine's own launcher render the tiny model's stage 2 as the single process does, through the code the
GPUs run (only the backend differs); a rank killed mid-job fails it by name and the next job works; no
helper outlives its group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from engine.generation.lengths import plan_length, rules_for
from engine.generation.parallel.network import duplicate_single_rows
from engine.generation.parallel.plan import BadParallel, ParallelPlan, device_groups, parse_parallel
from engine.generation.parallel.ranks import parallel_pipeline
from engine.generation.pipeline import Pipeline
from engine.models.control_dit import ControlDiT
from engine.models.dpm_sampler import DiffusionCancelled
from engine.models.step_cache import CacheCounts, StepCache
from engine.specs import TINY
from engine.weights.random_weights import randomise
from tests.harness import WAIT_S, RunningEngine, wait_until

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


def listening(pid: int | str = "self") -> list[str]:
    """The addresses `pid`'s listening TCP sockets are bound to (from /proc)."""
    import ipaddress

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address = bytes.fromhex(fields[1].split(":")[0])
                # the kernel writes each 32-bit word of the address in host (little-endian) order
                words = b"".join(address[i : i + 4][::-1] for i in range(0, len(address), 4))
                found.append(str(ipaddress.ip_address(words)))
    return found


def off_loopback(addresses: list[str]) -> list[str]:
    import ipaddress

    def loopback(text: str) -> bool:
        address = ipaddress.ip_address(text)
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped or address).is_loopback

    return [a for a in addresses if not loopback(a)]


def network_interface() -> str | None:
    """The interface of this machine's default route (one with an address, facing the network), if any."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return fields[0]
    return None


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads the sockets from /proc")
def test_a_group_listens_on_loopback_only_whatever_gloo_socket_ifname_says(monkeypatch):
    """The gloo group's sockets are on loopback, even where the environment names a network interface
    for gloo (unset, gloo takes the address the hostname resolves to, which may face the network)."""
    import torch.distributed as dist

    from engine.generation.parallel.group import make_group

    interface = network_interface()
    if interface is not None:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", interface)
    before = set(listening())
    store, groups, sums = dist.HashStore(), {}, {}

    def rank(index: int) -> None:
        groups[index] = make_group(store, "w", index, [0, 1], torch.device("cpu"), timedelta(seconds=30))
        tensor = torch.tensor([index + 1.0])
        groups[index].allreduce([tensor]).wait()
        sums[index] = tensor

    on_threads(rank, 2)
    opened = [a for a in listening() if a not in before]
    for group in groups.values():
        group.shutdown()
    assert sums == {0: torch.tensor([3.0]), 1: torch.tensor([3.0])}  # the group works
    assert opened and not off_loopback(opened), opened


def test_a_collective_waits_for_a_missing_rank_no_longer_than_the_groups_timeout():
    """make_group hands its timeout to torch: a collective whose peer never comes fails after it."""
    import threading
    import time

    import torch.distributed as dist

    from engine.generation.parallel.group import make_group

    store, groups, failed = dist.HashStore(), {}, {}

    def rank(index: int) -> None:
        groups[index] = make_group(store, "w", index, [0, 1], torch.device("cpu"), timedelta(seconds=1))

    on_threads(rank, 2)
    started = time.monotonic()

    def wait() -> None:
        try:
            groups[0].allreduce([torch.ones(1)]).wait()  # rank 1 never joins this one
        except RuntimeError as error:
            failed["after"], failed["error"] = time.monotonic() - started, str(error)

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    waiting.join(20)
    for group in groups.values():
        with contextlib.suppress(RuntimeError):
            group.shutdown()
    assert "after" in failed, "the collective was still waiting after 20 s: the 1 s timeout was lost"
    assert failed["after"] < 10, failed


def test_the_group_touches_no_private_torch_api():
    """The parallel package reaches torch.distributed through public names only: no `_name` attribute
    (but its own `_landiff_` flags on modules, and the standard library's `os._exit`), no private module.
    The constructors it calls still take a timeout, for NCCL too where this torch has it."""
    import ast

    import torch.distributed as dist

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    found = []
    for path in sorted((Path(__file__).parents[1] / "engine/generation/parallel").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and private(node.attr):
                text = ast.unparse(node)
                if not text.startswith(("self.", "cls.", "os._exit")) and "._landiff_" not in text:
                    found.append(f"{path.name}:{node.lineno}: {text}")
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found += [
                f"{path.name}:{node.lineno}: import {m}"
                for m in modules
                if any(private(part) for part in m.split("."))
            ]
    assert not found, found
    assert "timeout: datetime.timedelta" in (dist.ProcessGroupGloo.__init__.__doc__ or "")
    if dist.is_nccl_available():
        assert "timeout: datetime.timedelta" in (dist.ProcessGroupNCCL.__init__.__doc__ or "")


@torch.no_grad()
def test_a_guidance_half_alone_gives_the_pairs_bits_only_with_two_row_linears(one_thread):
    """Bit for bit on one intra-op thread, as the ranks run: with several, a matmul may split its rows
    among the threads one way for a batch of one and another for two (1.2e-7 apart at 2 threads)."""
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


def on_threads(rank, count: int) -> None:
    """`rank(index)` for each of `count` ranks, each on its own thread (one gloo store), waited for."""
    from threading import Thread

    threads = [Thread(target=rank, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)


@pytest.fixture(scope="module")
def single(home) -> Pipeline:
    """The tiny pipeline in this process: the single-process reference."""
    return Pipeline.for_model("tiny", home, device=torch.device("cpu"))


@pytest.fixture
def one_thread():
    """Every rank on one thread (helpers take rank 0's count): four processes share two cores without
    their OpenMP threads spinning against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def job(single):
    """A two-chunk tiny job's stage-2 inputs and its single-process latents."""
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


@pytest.mark.parametrize("split", ["seq=2", "cfg=2,seq=2"])
def test_sequence_parallel_matches_the_single_process_within_1e_5(home, tmp_path, job, split, one_thread):
    pipeline = start(home, tmp_path, split)
    try:
        chunks = render(pipeline, job)
        # a cancel at rank 0 stops every rank at the same step; the group then renders on
        calls = iter([False, False, True])
        with pytest.raises(DiffusionCancelled, match="stopped after 2 of 3"):
            render(pipeline, job, should_stop=lambda: next(calls))
        after = render(pipeline, job)
        helpers = pipeline.ranks.pids()
    finally:
        pipeline.close()
    for reference, got, later in zip(job[3], chunks, after, strict=True):
        scale = reference.abs().max()
        assert ((got - reference).abs().max() / scale) < 1e-5
        assert torch.equal(got, later)
    assert len(helpers) == parse_parallel(split).size - 1
    wait_until(lambda: all(gone(pid) for pid in helpers), "the helper ranks to exit")


# the engine: serve --parallel


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (["--parallel", "cfg=3"], "--parallel cfg=3: cfg is 1 or 2 (guidance has two halves), not 3"),
        (["--parallel", "seq=80"], "the tiny model's chunks have 72 video tokens, too few for 80 sequence"),
        (["--parallel", "4", "--gpus", "cpu:2"], "--parallel cfg=2,seq=2 needs 4 devices a group; 2"),
    ],
)
def test_serve_refuses_a_parallel_split_it_cannot_serve_in_one_line(
    given, says, tmp_path, monkeypatch, capsys
):
    from engine.cli.main import main

    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve", "--model", "tiny", *given]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and err.startswith("landiff-engine serve: ")
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def helper_ranks(parent: int) -> list[int]:
    """Pids of the helper ranks `parent` started (from /proc: their parent and command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if (
                int(stat.rsplit(")", 1)[1].split()[1]) == parent
                and b"engine.generation.parallel.rank" in command
            ):
                found.append(int(entry.name))
    return found


def until_done(client, job_id: str, on_event=None) -> dict:
    for event in client.events():
        if event.get("job_id") == job_id:
            if on_event is not None:
                on_event(event)
            if event["event"] in ("job_finished", "job_failed", "job_cancelled"):
                return event
    raise AssertionError("the engine went away")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the helper ranks through /proc")
def test_a_parallel_group_fed_by_the_llm_lane_renders_as_one_process_and_survives_a_killed_rank(
    tmp_path, home, single
):
    """`serve --parallel 2 --llm-device cpu` on a machine without GPU: two CPU ranks (cfg=2) render with the
    step cache from the lane's tokens, listening on loopback only; the frames and skip counts are one
    process's from the same tokens."""
    from engine.generation.job import JobSpec
    from engine.generation.video import read_mp4

    serve_args = ("--parallel", "2", "--llm-device", "cpu")
    engine = RunningEngine(tmp_path / "engine", home, serve_args=serve_args)
    interface = network_interface()
    if interface is not None:  # what a user may have set for other torch jobs: the group stays on loopback
        engine.env["GLOO_SOCKET_IFNAME"] = interface
    engine.start()
    try:
        with engine.client() as client:
            client.request("hello", client="tests")
            client.request("subscribe", since=client.request("status")["seq"])
            params = {"prompt": "a lighthouse at dawn", "steps": 6, "seed": 11, "cache": 0.5}
            first = client.request("submit", params=params)["job_id"]
            assert until_done(client, first)["event"] == "job_finished"
            job = client.request("get_job", job_id=first)["job"]
            assert job["worker"] == "cpu:0+cpu:1"
            record = json.loads(Path(job["sidecar_path"]).read_text())
            assert record["stage1"]["ahead"] and record["step_cache"]["dit_calls_skipped"] > 0
            (helper,) = helper_ranks(engine.process.pid)
            sockets = listening(helper)
            assert sockets and not off_loopback(sockets + listening(engine.process.pid))

            killed = []

            def kill_mid_denoise(event: dict) -> None:
                if event["event"] == "job_progress" and event["stage"] == "denoise" and not killed:
                    os.kill(helper, signal.SIGKILL)
                    killed.append(helper)

            doomed = client.request("submit", params={**params, "steps": 200})["job_id"]
            failed = until_done(client, doomed, kill_mid_denoise)
            assert failed["event"] == "job_failed" and killed
            assert "rank 1 of the parallel group (cpu:1) died mid-job (killed by signal 9)" in failed["error"]
            third = client.request("submit", params=params)["job_id"]
            assert until_done(client, third)["event"] == "job_finished"  # on a rebuilt group
            again = client.request("get_job", job_id=third)["job"]
        (rebuilt,) = helper_ranks(engine.process.pid)
        assert rebuilt != helper
    finally:
        engine.stop()
    assert gone(rebuilt) and gone(helper)  # the engine's stop took its helper along: no orphan
    assert not list(engine.runtime.glob("parallel-*"))  # nor its rendezvous file
    # a single process's job from the same tokens and seed: the same frames, bit for bit
    tokens = Path(job["tokens_path"])
    result = single.run(
        JobSpec(params["prompt"], tmp_path / "one" / "v.mp4", steps=6, seed=11, cache=0.5, tokens=tokens)
    )
    frames = read_mp4(result.video)[0]
    assert (frames == read_mp4(Path(job["video_path"]))[0]).all()
    assert (frames == read_mp4(Path(again["video_path"]))[0]).all()
    assert json.loads(result.sidecar.read_text())["step_cache"] == record["step_cache"]


@pytest.mark.parametrize(
    ("split", "grid", "attention"),
    [
        ("seq=2", (6, 10), "UlyssesAttention"),  # 45 tokens: 23 + 22 and a pad
        ("seq=4", (6, 10), "UlyssesAttention"),  # 12 a rank, 3 pads
        ("seq=5", (8, 12), "SequenceShardAttention"),  # 4 heads: no Ulysses; 72 tokens: 15 a rank, 3 pads
        ("cfg=2,seq=3", (8, 12), "SequenceShardAttention"),
    ],
)
def test_uneven_shards_are_padded_and_the_padding_never_attended(split, grid, attention):
    """Video tokens that do not divide by the ranks: the last shard is padded, by Ulysses where the ranks
    divide the heads, by gathered keys and values elsewhere. The ranks are threads on one gloo store
    here, the DiT call the one the processes make."""
    from copy import deepcopy

    import torch.distributed as dist

    from engine.generation.parallel.group import ParallelGroup
    from engine.generation.parallel.network import ParallelDiT

    plan = parse_parallel(split)
    network = randomise(ControlDiT(TINY.dit), torch.Generator().manual_seed(0)).eval()
    g = torch.Generator().manual_seed(1)
    frames, channels, (height, width) = 3, TINY.dit.latent_channels, grid
    args = (
        torch.randn(2, frames, channels, height, width, generator=g),
        torch.randn(2, 7, TINY.dit.text_dim, generator=g),
        torch.tensor([700.0, 700.0]),
        torch.randn(1, frames, channels, height, width, generator=g),
    )
    with torch.no_grad():
        reference = network(*args)
    store = dist.HashStore()
    results: dict[int, torch.Tensor] = {}

    def rank(index: int) -> None:
        group = ParallelGroup(plan, index, torch.device("cpu"), store)
        with torch.no_grad():
            split = ParallelDiT(deepcopy(network), group)
            assert type(split.attention).__name__ == attention
            results[index] = split(*args)

    on_threads(rank, plan.size)
    assert sorted(results) == list(range(plan.size))
    for got in results.values():
        assert ((got - reference).abs().max() / reference.abs().max()) < 1e-5


def guidance_parallel_render(single, job, chunks: int = 2, **render) -> list:
    """The two-chunk job's latents rendered by cfg=2 over two ranks: threads on one gloo store, running
    the processes' render loop (rank 0 leads, the helper follows its header). `render`: render_chunks's
    steps and options; `chunks`: how many it renders (fewer from a resumed render's cursor)."""
    from copy import copy, deepcopy

    import torch.distributed as dist

    from engine.generation.parallel.group import ParallelGroup
    from engine.generation.parallel.network import attach
    from engine.generation.parallel.render import follow_renders

    text, codes, plan, _ = job
    base, store, rendered = single.stage2(), dist.HashStore(), {}

    def rank(index: int) -> None:
        stage = copy(base)
        stage.network, stage.decoder = deepcopy(base.network), deepcopy(base.decoder)
        group = ParallelGroup(ParallelPlan(2, 1), index, torch.device("cpu"), store)
        attach(stage, group)
        if index == 0:
            rendered[0] = list(stage.render_chunks(text, codes, plan, seed=SEED, **render))
            group.close()  # the helper leaves its loop
        else:
            follow_renders(stage, group)  # the steps and the cache threshold come in rank 0's header
            rendered[1] = True

    on_threads(rank, 2)
    assert rendered.get(1) is True and len(rendered[0]) == chunks
    return rendered[0]


def test_guidance_parallel_renders_the_single_process_latents_bit_for_bit(single, job):
    """cfg=2 over two ranks: the whole stage-2 latents of the two-chunk job equal the single process's,
    bit for bit."""
    reference = job[3]
    rendered = guidance_parallel_render(single, job, steps=STEPS)
    assert all(torch.equal(a, b) for a, b in zip(reference, rendered, strict=True))


def test_guidance_parallel_resumes_a_render_at_its_cursor_bit_for_bit(single, job):
    """A long video resumed on a group (engine/generation/resume.py): rank 0 sends the helpers where the
    render stands (the next chunk, the generator's state, the overlap latents), and the chunks after it
    equal the single process's uninterrupted ones, bit for bit."""
    from engine.generation.cursor import RenderCursor

    text, codes, plan, reference = job
    cursor = RenderCursor()
    chunks = single.stage2().render_chunks(text, codes, plan, seed=SEED, steps=STEPS, cursor=cursor)
    next(chunks)
    chunks.close()
    assert cursor.index == 1 and cursor.generator is not None
    resumed = RenderCursor(cursor.index, cursor.generator, cursor.prefix)
    (rendered,) = guidance_parallel_render(single, job, chunks=1, steps=STEPS, cursor=resumed)
    assert torch.equal(rendered, reference[1])


# step caching (cache > 0) on a group

CACHE, CACHE_STEPS = 0.2, 4  # on the tiny job: the middle step of one chunk skipped, in both branches


@pytest.fixture(scope="module")
def cached_job(single, job):
    """The job's single-process latents with the step cache, and its counts."""
    text, codes, plan, _ = job
    counts = CacheCounts()
    chunks = list(
        single.stage2().render_chunks(
            text, codes, plan, seed=SEED, steps=CACHE_STEPS, cache=CACHE, counts=counts
        )
    )
    assert counts.skipped > 0  # else these tests would not see the cache at work
    return chunks, counts


def test_guidance_parallel_with_the_step_cache_renders_the_single_process_bits(single, job, cached_job):
    """cfg=2 with cache 0.2: the latents equal the single process's with cache 0.2 bit for bit, and rank 0
    counts both branches' calls and skips."""
    reference, single_counts = cached_job
    counts = CacheCounts()
    rendered = guidance_parallel_render(single, job, steps=CACHE_STEPS, cache=CACHE, counts=counts)
    assert all(torch.equal(a, b) for a, b in zip(reference, rendered, strict=True))
    assert counts == single_counts


def test_sequence_parallel_with_the_step_cache_is_within_1e_5(home, tmp_path, job, cached_job, one_thread):
    """seq=2 processes with cache 0.2: the single process's latents within 1e-5 and its counts; a cancel
    still stops every rank at the same step, and the next render starts a fresh cache on every rank."""
    text, codes, plan, _ = job
    reference, single_counts = cached_job
    pipeline = start(home, tmp_path, "seq=2")
    try:
        stage = pipeline.stage2()

        def cached(**kwargs) -> list[torch.Tensor]:
            return list(
                stage.render_chunks(text, codes, plan, seed=SEED, steps=CACHE_STEPS, cache=CACHE, **kwargs)
            )

        counts = CacheCounts()
        chunks = cached(counts=counts)
        calls = iter([False, False, True])
        with pytest.raises(DiffusionCancelled, match="stopped after 2 of 4"):
            cached(should_stop=lambda: next(calls))
        after = cached()
    finally:
        pipeline.close()
    assert counts == single_counts
    for expected, got, later in zip(reference, chunks, after, strict=True):
        assert ((got - expected).abs().max() / expected.abs().max()) < 1e-5
        assert torch.equal(got, later)


@pytest.mark.parametrize(
    ("split", "frames", "grid"),
    [
        ("cfg=2", 3, (8, 12)),  # bit for bit
        ("cfg=2,seq=2", 3, (6, 10)),  # 45 tokens: 23 + 22 and a pad, Ulysses
        ("seq=3", 2, (8, 10)),  # 40 tokens: 14 + 14 + 12 and 2 pads, gathered keys and values
    ],
)
def test_a_split_step_cache_decides_and_computes_as_the_single_process(split, frames, grid, one_thread):
    """Calls where the branches decide apart: the uncond one barely moves and skips while the cond one
    moves and runs alone, then both skip, then the last call runs both. Every rank takes the single
    process's decisions (padding not counted in the signal) and counts, and gives its v: bit for bit
    with cfg alone (a half running alone computes as a batch of one, as the single process does),
    within 1e-5 with a sequence split. Ranks are threads on one gloo store."""
    from copy import deepcopy

    import torch.distributed as dist

    from engine.generation.parallel.group import ParallelGroup
    from engine.generation.parallel.network import ParallelDiT

    plan = parse_parallel(split)
    network = randomise(ControlDiT(TINY.dit), torch.Generator().manual_seed(0)).eval()
    g = torch.Generator().manual_seed(1)
    shape = (1, frames, TINY.dit.latent_channels, *grid)
    a, b, nudge = (torch.randn(shape, generator=g) for _ in range(3))
    text = torch.randn(2, 7, TINY.dit.text_dim, generator=g)
    semantic = torch.randn(shape, generator=g)
    inputs = [
        torch.cat([a, a]),
        torch.cat([a + 0.001 * nudge, b]),  # uncond skips, cond runs alone
        torch.cat([a + 0.002 * nudge, b + 0.001 * nudge]),  # both skip
        torch.cat([a, b]),  # the last call: both run
    ]
    timesteps = torch.tensor([500.0, 500.0])
    threshold, steps = 0.05, len(inputs)
    one = StepCache(network, threshold, steps)
    with torch.no_grad():
        reference = [one(x, text, timesteps, semantic) for x in inputs]
    assert one.counts == CacheCounts(calls=8, skipped=3)
    store = dist.HashStore()
    results: dict[int, tuple[list[torch.Tensor], CacheCounts, int]] = {}

    def rank(index: int) -> None:
        group = ParallelGroup(plan, index, torch.device("cpu"), store)
        counts = CacheCounts()
        with torch.no_grad():
            call = ParallelDiT(deepcopy(network), group).step_cache(threshold, steps, counts)
            outputs = [call(x, text, timesteps, semantic) for x in inputs]
        cache = call.args[0]  # the rank's StepCache: the signal it kept holds its own tokens only
        results[index] = (outputs, counts, cache.previous.shape[1])

    on_threads(rank, plan.size)
    assert sorted(results) == list(range(plan.size))
    tokens = frames * (grid[0] // 2) * (grid[1] // 2)
    assert sum(results[rank][2] for rank in range(plan.seq)) == tokens  # no padding in the signal
    for outputs, counts, _ in results.values():
        assert counts == one.counts
        for expected, got in zip(reference, outputs, strict=True):
            if plan.seq == 1:
                assert torch.equal(got, expected)
            else:
                assert ((got - expected).abs().max() / expected.abs().max()) < 1e-5
