"""A long video whose engine was killed (or stopped) mid-way continues at its next chunk from the resume
checkpoint written after each chunk (engine/generation/resume.py), and ends bit for bit as an uninterrupted
run does: the pipeline resumed from a checkpoint as a kill leaves it, a checkpoint that does not fit
ignored, a restarted engine putting a resumable job back in the queue, and `kill -9` of a real engine."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.atomic import partial_path
from engine.daemon.store import Store
from engine.daemon.worker import recover_running, sweep_leftovers
from engine.generation import resume_point
from engine.generation.job import JobCancelled, JobSpec, JobSuspended
from engine.generation.resume import Checkpoints, load_or_none
from engine.generation.video import read_mp4
from engine.job_words import resumed_words
from engine.protocol import JobParams
from tests.harness import ENGINE_LEAVES_S, RunningEngine, subscribed, until_ended

PROMPT = "A paper lantern drifting over a night river."
FOUR_CHUNKS = 9 + 3 * 8  # the tiny model: a 9-frame clip, then 8 frames a chunk
KILLED_AFTER = 2  # chunks in the snapshot taken as a kill would leave the folder
TORN = b"half of the next chunk's fragment" * 50  # what a kill mid-append leaves after the last chunk


def job(folder: Path, **params) -> JobSpec:
    values = {"steps": 2, "frames": FOUR_CHUNKS, "seed": 7, "fps": 16, **params}
    return JobSpec(PROMPT, folder / "video.mp4", **values)


@pytest.fixture(scope="module")
def runs(pipeline, tmp_path_factory):
    """An uninterrupted 4-chunk run with checkpoints (interpolated to 16 fps: the interpolator's context
    crosses the resume too), and a copy of its folder taken right after chunk 2's checkpoint, with part of
    a next chunk appended to the growing file: the folder a kill at that moment leaves."""
    base = tmp_path_factory.mktemp("resume")
    whole, killed = base / "whole", base / "killed"

    def snapshot(done) -> None:
        if done.report.index + 1 == KILLED_AFTER:
            shutil.copytree(whole, killed)
            with open(partial_path(killed / "video.mp4"), "ab") as video:
                video.write(TORN)

    result = pipeline.run(job(whole), on_chunk=snapshot, checkpoints=Checkpoints(whole))
    return result, killed


def fresh_copy(killed: Path, to: Path) -> Path:
    shutil.copytree(killed, to)
    return to


def test_a_long_video_resumed_from_a_killed_runs_checkpoint_equals_the_uninterrupted_run(
    pipeline, runs, tmp_path
):
    whole, killed = runs
    assert not (whole.video.parent / resume_point.FOLDER).exists()  # a finished job keeps no checkpoint
    folder = fresh_copy(killed, tmp_path / "job")
    start = load_or_none(folder, job(folder), "tiny", "cpu", "the test job")
    assert start is not None and (start.chunks_done, start.chunks) == (KILLED_AFTER, 4)
    chunks: list[int] = []
    resumed = pipeline.run(
        job(folder),
        on_chunk=lambda done: chunks.append(done.report.index),
        checkpoints=Checkpoints(folder, start),
    )
    assert chunks == [2, 3]  # only the chunks the kill had not finished were made again
    # the same bytes as the uninterrupted run: the torn append was cut off, the rest appended as before
    assert resumed.video.read_bytes() == whole.video.read_bytes()
    assert np.array_equal(read_mp4(resumed.video)[0], read_mp4(whole.video)[0])
    assert resumed.tokens.read_bytes() == whole.tokens.read_bytes()
    assert resumed.thumbnail.read_bytes() == whole.thumbnail.read_bytes()
    assert (resumed.frames, resumed.video_frames, resumed.chunks_done) == (33, 66, 4)
    assert (whole.frames, whole.video_frames, whole.resumes, resumed.resumes) == (33, 66, [], [KILLED_AFTER])
    record, first = json.loads(resumed.sidecar.read_text()), json.loads(whole.sidecar.read_text())
    assert record["video"] == first["video"] and record["chunks"]["done"] == 4
    assert [c["index"] for c in record["chunk_timings"]] == [0, 1, 2, 3]  # the killed run's two too
    assert record["chunk_timings"][:2] == first["chunk_timings"][:2]
    assert record["resumed_after_chunks"] == [KILLED_AFTER] and first["resumed_after_chunks"] == []
    assert record["step_cache"]["dit_calls"] == first["step_cache"]["dit_calls"]
    assert sorted(p.name for p in folder.iterdir()) == ["video.json", "video.mp4", "video.npy", "video.png"]


def test_a_stop_while_resuming_leaves_the_checkpoint_or_ends_with_its_chunks(pipeline, runs, tmp_path):
    """The engine stopping as the job resumes: the checkpoint and the partial video stay, to be resumed by
    the next engine; a cancel then: the job ends with the checkpoint's chunks, its checkpoint gone."""
    _, killed = runs
    folder = fresh_copy(killed, tmp_path / "job")
    start = load_or_none(folder, job(folder), "tiny", "cpu", "the test job")
    stopping = Checkpoints(folder, start, suspend=lambda: True)
    with pytest.raises(JobSuspended) as suspended:
        pipeline.run(job(folder), should_stop=lambda: True, checkpoints=stopping)
    assert (suspended.value.chunks_done, suspended.value.chunks, suspended.value.partial) == (
        KILLED_AFTER,
        4,
        None,
    )
    again = load_or_none(folder, job(folder), "tiny", "cpu", "the test job")
    assert again is not None and again.chunks_done == KILLED_AFTER  # as it was: resumable again
    with pytest.raises(JobCancelled) as cancelled:
        pipeline.run(job(folder), should_stop=lambda: True, checkpoints=Checkpoints(folder, again))
    kept = cancelled.value.partial
    assert (
        kept is not None
        and kept.partial
        and (kept.chunks_done, kept.frames, kept.video_frames) == (2, 17, 34)
    )
    assert read_mp4(kept.video)[0].shape[0] == 34 and not (folder / resume_point.FOLDER).exists()


def test_a_checkpoint_that_does_not_fit_is_ignored_saying_why(runs, tmp_path, caplog, monkeypatch):
    _, killed = runs
    caplog.set_level(logging.WARNING, logger="engine.generation.resume")

    def refused(folder: Path, spec: JobSpec, device: str = "cpu") -> str:
        caplog.clear()
        assert load_or_none(folder, spec, "tiny", device, "the test job") is None
        assert not (folder / resume_point.FOLDER).exists()  # removed: the job starts from its first chunk
        (message,) = [r.getMessage() for r in caplog.records]
        assert message.startswith("the test job: not resumed, starting from its first chunk: ")
        return message

    other = fresh_copy(killed, tmp_path / "params")
    assert "written for another job" in refused(other, job(other, steps=3))
    device = fresh_copy(killed, tmp_path / "device")
    assert "written for another device" in refused(device, job(device), device="cuda")
    corrupt = fresh_copy(killed, tmp_path / "corrupt")
    state = resume_point.state_file(corrupt)
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF  # a bit of the last tensor's data
    state.write_bytes(bytes(data))
    assert "tensors changed on disk" in refused(corrupt, job(corrupt))
    cut = fresh_copy(killed, tmp_path / "cut")
    resume_point.state_file(cut).write_bytes(b"\x10\x00")
    assert "cut short" in refused(cut, job(cut))
    video = fresh_copy(killed, tmp_path / "video")
    with open(partial_path(video / "video.mp4"), "r+b") as partial:
        partial.seek(100)
        byte = partial.read(1)
        partial.seek(100)
        partial.write(bytes([byte[0] ^ 0xFF]))
    assert "partial video is not the one checkpointed" in refused(video, job(video))
    latents = fresh_copy(killed, tmp_path / "latents")
    resume_point.chunk_file(latents, 1).unlink()
    assert "lacks the latents of chunk 2" in refused(latents, job(latents))
    older = fresh_copy(killed, tmp_path / "version")
    monkeypatch.setattr(resume_point, "__version__", "0.0.1")
    assert "written by engine 0.1.0, this is 0.0.1" in refused(older, job(older))


def test_a_restarted_engine_queues_the_jobs_it_can_resume_and_interrupts_the_others(runs, tmp_path):
    _, killed = runs
    outputs = tmp_path / "outputs"
    store = Store(tmp_path / "jobs.db")
    params = JobParams(prompt=PROMPT, steps=2, frames=FOUR_CHUNKS, seed=7, fps=16).model_dump()
    ids = {}
    for name in ("resumable", "fresh", "looping", "no_folder"):
        row = store.add_job(params, "tiny", "0")
        store.update(row.id, status="running", started_at=1.0, worker="cpu")
        ids[name] = row.id
    for name in ("resumable", "looping"):
        fresh_copy(killed, outputs / ids[name])
    (outputs / ids["fresh"]).mkdir(parents=True)  # killed before its first chunk: a preview at most
    (outputs / ids["fresh"] / "chunk-000.png").write_bytes(b"png")
    store.update(ids["looping"], resumed_at_chunk=KILLED_AFTER)  # resumed there before and killed again

    interrupted = recover_running(store, outputs)
    assert sorted(interrupted) == sorted([ids["fresh"], ids["looping"], ids["no_folder"]])
    row = store.get(ids["resumable"])
    assert row is not None and (row.status, row.started_at, row.error) == ("queued", None, None)
    assert all(store.get(ids[name]).status == "interrupted" for name in ("fresh", "looping", "no_folder"))
    sweep_leftovers(outputs)  # the resumable job's growing video stays, to be cut back when it resumes
    assert partial_path(outputs / ids["resumable"] / "video.mp4").is_file()
    assert resume_point.resume_point(outputs / ids["resumable"]).chunks_done == KILLED_AFTER


def test_kill_9_then_a_new_engine_resumes_the_long_video_bit_for_bit(weights, tmp_path):
    """SIGKILL after the first chunk, then SIGTERM after a later one: the job resumes twice and its video
    is the one an uninterrupted run of the same job makes on the same engine."""
    params = {"prompt": PROMPT, "steps": 3, "frames": FOUR_CHUNKS, "seed": 11}
    engine = RunningEngine(tmp_path, weights).start()
    client, _ = subscribed(engine)
    with client:
        job_id = client.request("submit", params=params)["job_id"]
        for event in client.events():
            if event.get("job_id") == job_id and event["event"] == "chunk_finished":
                break
        engine.process.send_signal(signal.SIGKILL)
        engine.process.wait(timeout=ENGINE_LEAVES_S)
    events = []
    engine = RunningEngine(tmp_path, weights).start()
    try:
        client, _ = subscribed(engine, since=0)
        with client:
            for event in client.events():
                events.append(event)
                if event.get("job_id") == job_id and event["event"] == "chunk_finished":
                    break
    finally:
        engine.stop()  # mid-job (its connections close first): the job waits to resume after its last chunk
    started = [e for e in events if e["event"] == "job_started"]
    assert len(started) == 1 and started[0]["job_id"] == job_id
    first_resume = started[0]["resumed_at_chunk"]
    assert 1 <= first_resume < 4 and started[0]["chunks"] == 4
    assert resumed_words(started[0]) == f"resumed at chunk {first_resume + 1} of 4" + (
        " (chunk 1 kept)" if first_resume == 1 else f" (chunks 1-{first_resume} kept)"
    )
    with sqlite3.connect(tmp_path / "data" / "landiff.db") as database:
        status, suspended = database.execute(
            "SELECT status, started_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    assert (status, suspended) == ("queued", None)
    assert f"job {job_id} back in the queue" in (tmp_path / "engine.stderr").read_text()
    kept = resume_point.resume_point(tmp_path / "data" / "outputs" / job_id).chunks_done
    assert first_resume < kept < 4

    engine = RunningEngine(tmp_path, weights).start()
    try:
        client, _ = subscribed(engine, since=0)
        with client:
            events = until_ended(client, [job_id])
            job = client.request("get_job", job_id=job_id)["job"]
            again = client.request("submit", params=params)["job_id"]  # the same job, uninterrupted
            until_ended(client, [again])
            reference = client.request("get_job", job_id=again)["job"]
    finally:
        engine.stop()
    (started,) = [e for e in events if e["event"] == "job_started" and e["job_id"] == job_id]
    assert started["resumed_at_chunk"] == kept
    assert job["status"] == "finished" and job["resumed_at_chunk"] == kept
    assert resumed_words(job) == resumed_words(started)
    assert reference["status"] == "finished" and reference["resumed_at_chunk"] is None
    assert resumed_words(reference) is None
    video, expected = Path(job["video_path"]), Path(reference["video_path"])
    assert video.read_bytes() == expected.read_bytes()
    assert np.array_equal(read_mp4(video)[0], read_mp4(expected)[0])
    assert [c["index"] for c in job["chunk_timings"]] == [0, 1, 2, 3]
    record = json.loads(Path(job["sidecar_path"]).read_text())
    assert record["resumed_after_chunks"] == [first_resume, kept]
    assert record["video"] == json.loads(Path(reference["sidecar_path"]).read_text())["video"]
    assert not (video.parent / resume_point.FOLDER).exists()
    assert [p for p in (tmp_path / "data" / "outputs").rglob("*") if ".partial" in p.name] == []
