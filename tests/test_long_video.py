"""Long videos on the tiny model: chunk plan, fixed overlap during sampling, streaming decode and mp4,
events, cancel keeping the finished chunks, and memory that stays flat as the video grows."""

from __future__ import annotations

import gc
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.cli.main import main
from engine.generation import lengths
from engine.generation.job import JobSpec
from engine.generation.video import StreamingMp4Writer, read_mp4
from engine.models.configs import VAEConfig
from engine.models.video_vae import StreamingDecoder, build_vae, decode_latents
from engine.specs import get_spec

PROMPT = "A paper boat drifting down a rainy street."
TINY = get_spec("tiny")
LANDIFF = get_spec("landiff")


def plan_length(spec, frames=None, overlap=None):
    return lengths.plan_length(lengths.rules_for(spec.name), frames, overlap)


def limits(spec, overlap=None):
    return lengths.limits(lengths.rules_for(spec.name), overlap)


THREE_CHUNKS = plan_length(TINY, None).clip_frames + 2 * plan_length(TINY, None).chunk_frames


def test_the_plan_follows_the_spec_rounds_up_and_names_the_maximum():
    plan = plan_length(LANDIFF, 49 + 2 * 24)
    assert (plan.chunks, plan.frames, plan.overlap, plan.segments) == (3, 97, 7, 2) and not plan.rounded
    assert [plan.latent_range(j) for j in range(3)] == [(0, 13), (6, 19), (12, 25)]
    assert [plan.frame_range(j) for j in range(3)] == [(0, 48), (49, 72), (73, 96)]
    rounded = plan_length(LANDIFF, 50)
    assert rounded.frames == 73 and rounded.note().startswith("50 frames rounded up to 73")
    assert plan_length(LANDIFF, 10).frames == 49 and plan_length(LANDIFF, None).note() is None
    tiny = plan_length(TINY, THREE_CHUNKS)  # the same rule on the tiny spec's 3-frame segments
    assert (tiny.window, tiny.overlap, tiny.chunks, tiny.frames) == (3, 1, 3, 9 + 2 * 8)
    top = limits(LANDIFF)
    assert (top["max_frames"], top["clip_frames"], top["chunk_frames"]) == (1297, 49, 24)
    assert plan_length(LANDIFF, 1297).chunks == top["max_chunks"] == 53
    with pytest.raises(ValueError, match=r"at most 1297 frames \(162\.1 s"):
        plan_length(LANDIFF, 1298)
    with pytest.raises(ValueError, match="choose one of 1, 3, 5, 7, 9, 11, got 6"):
        plan_length(LANDIFF, 100, overlap=6)
    assert plan_length(LANDIFF, 100, overlap=11).chunk_frames == 8


def test_the_length_rules_come_from_the_specs_without_torch():
    from engine.models.token_layout import max_segments
    from engine.specs import SPECS

    for name, spec in SPECS.items():
        rules = lengths.rules_for(name)
        assert (rules.window, rules.time_factor, rules.fps) == (
            spec.llm.frames_per_segment,
            spec.vae.temporal_compression,
            spec.fps,
        )
        assert rules.max_segments == max_segments(spec.llm)
    code = (
        "import sys, engine.generation.lengths as l, engine.cli.client_commands; "
        "l.rules_for('landiff'); assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


def test_streaming_vae_decode_equals_one_decode_of_all_latents():
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(base_channels=32, res_blocks=1)).eval()
    latents = torch.randn(1, 13 + 2, 16, 1, 1)  # the release's first chunk (3, 2, 2, 2, 2, 2), then a pair
    with torch.no_grad():
        whole = decode_latents(vae, latents)
        decoder = StreamingDecoder(vae)
        pieces = [decoder.decode(latents[:, :13]), decoder.decode(latents[:, 13:])]
        with pytest.raises(ValueError, match="multiple of 2 latent frames"):
            decoder.decode(latents[:, :3])
    assert [p.shape[2] for p in pieces] == [49, 8]
    assert torch.equal(torch.cat(pieces, dim=2), whole)


def test_the_growing_mp4_plays_after_every_chunk(tmp_path):
    rows, cols = np.mgrid[0:64, 0:96]
    frames = np.stack(
        [
            np.stack([(cols * 2 + 9 * i) % 256, (rows * 3) % 256, np.full_like(cols, 10 * i)], -1)
            for i in range(25)
        ]
    ).astype(np.uint8)
    writer = StreamingMp4Writer(tmp_path / "v.mp4", fps=8)
    for end in (9, 17, 25):
        writer.append(frames[end - 8 if end > 9 else 0 : end])
        played, fps = read_mp4(writer.partial)
        assert played.shape[0] == end and fps == 8 and not (tmp_path / "v.mp4").exists()
        # lossy, but each frame is the one written there (frames differ by far more than the coding error)
        assert np.abs(played.astype(int) - frames[:end]).mean(axis=(1, 2, 3)).max() < 6
    assert writer.finish() == tmp_path / "v.mp4" and not writer.partial.exists()
    assert read_mp4(tmp_path / "v.mp4")[0].shape[0] == 25


def test_three_chunks_make_the_expected_frames_in_order(pipeline, tmp_path):
    plan = plan_length(TINY, THREE_CHUNKS)
    progress, done, playable = [], [], []

    def on_chunk(chunk) -> None:
        done.append(chunk)
        playable.append(read_mp4(chunk.partial_video)[0].shape[0])  # the file plays while it grows

    result = pipeline.run(
        JobSpec(PROMPT, tmp_path / "long.mp4", steps=2, frames=THREE_CHUNKS),
        on_progress=progress.append,
        on_chunk=on_chunk,
    )
    frames, fps = read_mp4(result.video)
    assert frames.shape[0] == plan.frames == 25 and fps == TINY.fps and result.frames == 25
    assert [c.report.index for c in done] == [0, 1, 2] and playable == [9, 17, 25]
    assert [(c.report.first_frame, c.report.last_frame) for c in done] == [(0, 8), (9, 16), (17, 24)]
    assert [c.report.video_seconds for c in done] == [9 / 8, 17 / 8, 25 / 8]
    denoise = [(e.chunk, e.step, e.total) for e in progress if e.stage == "denoise"]
    assert denoise == [(c, s, 2) for c in (1, 2, 3) for s in (1, 2)]
    assert all(e.chunks == 3 for e in progress)
    chunks_seen = [e.chunk for e in progress]
    assert chunks_seen == sorted(chunks_seen)  # events arrive in chunk order
    writes = [e.frames_written for e in progress if e.stage == "write"]
    assert writes == [9, 17, 25]
    stage2 = [e for e in progress if e.stage in ("denoise", "decode", "write")]
    assert all(e.job_eta_s is not None and e.job_eta_s >= 0 for e in stage2) and stage2[-1].job_eta_s == 0
    record = json.loads(result.sidecar.read_text())
    assert record["status"] == "finished" and record["video"]["frames"] == 25
    assert record["length"]["chunks"] == 3 and record["length"]["overlap"] == 1
    assert [c["index"] for c in record["chunk_timings"]] == [0, 1, 2]
    assert record["chunk_timings"] == [c.timing.model_dump() for c in done]  # as each chunk said it
    assert len(np.load(result.tokens)) == plan.segments * 11
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.json", "long.mp4", "long.npy", "long.png"]
    # chunk 0 is exactly the clip a one-clip job makes from the same tokens and seed
    clip = pipeline.run(JobSpec(PROMPT, tmp_path / "clip" / "c.mp4", steps=2, tokens=result.tokens))
    assert np.array_equal(read_mp4(clip.video)[0], frames[:9])


def test_overlap_latents_equal_the_previous_chunk_at_every_sampler_step(pipeline):
    plan = plan_length(TINY, 9 + 3 * 8, overlap=1)
    stage2 = pipeline.stage2()
    codes = torch.randint(0, TINY.llm.codebook_size, (plan.segments * 11,))
    seen: list[torch.Tensor] = []
    hook = stage2.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        text = stage2.encode_prompt(PROMPT)
        chunks = []
        for latents in stage2.render_chunks(text, codes, plan, seed=1, steps=4):
            chunks.append((latents.clone(), list(seen)))
            seen.clear()
    finally:
        hook.remove()
    assert len(chunks) == plan.chunks == 4
    for (before, _), (latents, inputs) in zip(chunks, chunks[1:], strict=False):
        prefix = before[:, -plan.overlap :]
        assert len(inputs) == 4  # one network call per step, [uncond, cond] in a batch of two
        for x in inputs:
            assert torch.equal(x[:1, : plan.overlap], prefix) and torch.equal(x[1:, : plan.overlap], prefix)
        assert torch.equal(latents[:, : plan.overlap], prefix)
        assert not torch.equal(
            inputs[0][:1, plan.overlap :], inputs[-1][:1, plan.overlap :]
        )  # the rest moves
    first_inputs = chunks[0][1]
    assert not torch.equal(first_inputs[0][:1, :1], first_inputs[-1][:1, :1])  # chunk 0 holds nothing fixed


def test_generate_takes_seconds_and_says_when_it_rounds(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "two.mp4"
    status = main(
        ["generate", PROMPT, "--model", "tiny", "--ckpts", str(home), "--seconds", "1.5", "--steps", "1"]
        + ["--out", str(out)]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert "12 frames rounded up to 17" in err and "2 chunks" in err
    assert read_mp4(out)[0].shape[0] == 17
    assert json.loads(out.with_suffix(".json").read_text())["length"]["rounded"].startswith("12 frames")
    status = main(["generate", PROMPT, "--model", "tiny", "--ckpts", str(home), "--frames", "99999"])
    err = capsys.readouterr().err
    assert status == 2 and "at most 2825 frames" in err and err.count("\n") == 1


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage Python can reach (parameters included)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS


def peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def test_memory_does_not_grow_with_the_number_of_chunks(pipeline, tmp_path):
    pipeline.stage1(), pipeline.stage2()  # loaded before measuring

    def peaks(chunks: int) -> tuple[int, int, int]:
        plan = plan_length(TINY, 9 + (chunks - 1) * 8)
        samples: list[int] = []

        def sample(event) -> None:
            if event.stage == "write":  # each chunk's end: anything a chunk left behind is still alive
                samples.append(live_tensor_bytes())

        gc.collect()
        reset_peak_rss()
        result = pipeline.run(
            JobSpec(PROMPT, tmp_path / f"m{chunks}.mp4", steps=1, frames=plan.frames), on_progress=sample
        )
        assert result.chunks_done == chunks and read_mp4(result.video)[0].shape[0] == plan.frames
        return max(samples), peak_rss()

    tensors_2, rss_2 = peaks(2)
    tensors_6, rss_6 = peaks(6)
    # Torch tensors Python can reach, at the end of every chunk: stable to a few hundred bytes here. Keeping
    # the video in memory would add 4 chunks of frames (8 x 64 x 96 x 3 values each); keeping every
    # chunk's latents, 4 x 18 KiB.
    assert tensors_6 <= tensors_2 + 16 * 1024, (tensors_2, tensors_6)
    # The process's peak resident memory: each tiny chunk's decode peaks at about the same height, within
    # the allocator's +-25 MiB; growth with the length would add up over 4 more chunks.
    assert rss_6 <= rss_2 + 96 * 2**20, (rss_2, rss_6)


def test_store_migrates_to_chunk_timings_and_knows_cancelled_partial(tmp_path):
    from engine.daemon.store import SCHEMA_VERSION, Store
    from engine.protocol import JOB_STATUSES, JobParams, parse_request

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a version-1 database, as the first engine release wrote it
        db.execute(
            "CREATE TABLE jobs (id VARCHAR PRIMARY KEY, created_at FLOAT, started_at FLOAT,"
            " finished_at FLOAT, status VARCHAR, prompt VARCHAR, params VARCHAR, model VARCHAR,"
            " engine_version VARCHAR,"
            " weights_sha256 VARCHAR, timings VARCHAR, peak_memory_bytes INTEGER, error VARCHAR,"
            " video_path VARCHAR, tokens_path VARCHAR, sidecar_path VARCHAR, thumbnail_path VARCHAR)"
        )
        db.execute("CREATE TABLE presets (name VARCHAR PRIMARY KEY, params VARCHAR, builtin BOOLEAN)")
        db.execute(
            "INSERT INTO jobs VALUES ('old1', 1.0, NULL, NULL, 'finished', 'p', '{\"prompt\": \"p\"}',"
            " 'tiny', '0', '{}', '{}', NULL, NULL, NULL, NULL, NULL, NULL)"
        )
        db.execute("PRAGMA user_version = 1")
    store = Store(path)
    old = store.get("old1").summary()
    assert old["chunk_timings"] == [] and (old["worker"], old["requeues"], old["quality"]) == (None, 0, None)
    assert old["resumed_at_chunk"] is None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    row = store.add_job(JobParams(prompt="long", frames=241).model_dump(), "tiny", "0")
    entry = {"index": 0, "denoise_s": 1.0, "decode_s": 0.5, "write_s": 0.25}  # as older engines wrote mid-job
    store.update(row.id, status="cancelled_partial", chunk_timings=[entry])
    (timing,) = store.get(row.id).to_summary().chunk_timings
    assert (timing.index, timing.denoise_s, timing.first_frame, timing.dit_calls) == (0, 1.0, None, None)
    with pytest.raises(ValidationError):  # a shape the summary could not read is refused as it is written
        store.update(row.id, chunk_timings=[{"index": 0, "denoise_s": 1.0}])
    assert [r.id for r in store.list_jobs(status="cancelled_partial")[0]] == [row.id]
    assert "cancelled_partial" in JOB_STATUSES
    request = parse_request(b'{"v": 1, "id": 1, "type": "list_jobs", "status": "cancelled_partial"}')
    assert request.status == "cancelled_partial"
    presets = store.presets()
    assert (
        presets["long 30 s"]["params"]["frames"] == 241 and presets["long 1 min"]["params"]["frames"] == 481
    )
    for name in ("long 30 s", "long 1 min"):  # no built-in long preset rounds, on either model
        frames = presets[name]["params"]["frames"]
        assert plan_length(TINY, frames).frames == plan_length(LANDIFF, frames).frames == frames
