"""Long videos through a real `landiff-engine serve` (tiny model): chunk events with previews, the
growing file, per-chunk timings in the store, and a cancel that keeps the finished chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.client import EngineError
from engine.generation.video import read_mp4
from tests.harness import RunningEngine, subscribed, wait_for

PROMPT = "A hot-air balloon rising over a valley at dawn."
PROGRESS_FIELDS = {
    "job_id",
    "stage",
    "step",
    "total",
    "chunk",
    "chunks",
    "rate",
    "eta_s",
    "frames_written",
    "video_seconds",
    "job_eta_s",
    "dit_calls",
    "cache_skips",
}
CHUNK_FIELDS = {
    "job_id",
    "index",
    "chunks",
    "first_frame",
    "last_frame",
    "frames_written",
    "video_seconds",
    "preview",
    "video_partial",
    "timings_s",
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from engine.specs import get_spec
    from engine.weights.layout import layout_for
    from engine.weights.tiny import ensure_tiny_release

    weights = tmp_path_factory.mktemp("weights")
    ensure_tiny_release(layout_for("tiny", weights), get_spec("tiny"))
    running = RunningEngine(tmp_path_factory.mktemp("engine"), weights).start()
    yield running
    running.stop()


def test_a_two_chunk_job_announces_each_chunk_with_a_preview(engine):
    client, _ = subscribed(engine)
    with client:
        job_id = client.request("submit", params={"prompt": PROMPT, "steps": 2, "frames": 10})["job_id"]
        events = wait_for(client, job_id)
        job = client.request("get_job", job_id=job_id)["job"]
    assert events[-1]["event"] == "job_finished" and events[-1]["frames"] == 17  # 10 rounds up to 9 + 8
    progress = [e for e in events if e["event"] == "job_progress"]
    assert all(set(e) - {"event", "seq", "v"} == PROGRESS_FIELDS for e in progress)
    assert {e["stage"] for e in progress} == {"text", "tokens", "denoise", "decode", "write"}
    assert [e["chunk"] for e in progress] == sorted(e["chunk"] for e in progress)
    assert {e["chunks"] for e in progress} == {2}
    finished = [e for e in events if e["event"] == "chunk_finished"]
    assert all(set(e) - {"event", "seq", "v"} == CHUNK_FIELDS for e in finished)
    assert [(e["index"], e["first_frame"], e["last_frame"]) for e in finished] == [(0, 0, 8), (1, 9, 16)]
    for event in finished:
        assert Path(event["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(event["preview"]).parent == Path(job["video_path"]).parent
    # each chunk is announced after the progress events of its own work and before the next chunk's
    order = [(e["event"], e.get("chunk", e.get("index", -1) + 1)) for e in events]
    first_of = {c: order.index(("job_progress", c)) for c in (1, 2)}
    announced = {e["index"] + 1: order.index(("chunk_finished", e["index"] + 1)) for e in finished}
    assert first_of[1] < announced[1] < first_of[2] < announced[2] == len(order) - 2  # then job_finished
    assert job["status"] == "finished" and read_mp4(Path(job["video_path"]))[0].shape[0] == 17
    assert [c["index"] for c in job["chunk_timings"]] == [0, 1]
    assert all(c["denoise_s"] > 0 and c["decode_s"] > 0 for c in job["chunk_timings"])


def test_cancel_after_the_first_chunk_keeps_a_playable_shorter_video(engine):
    client, _ = subscribed(engine)
    with client:
        params = {"prompt": PROMPT, "steps": 40, "frames": 9 + 5 * 8}
        job_id = client.request("submit", params=params)["job_id"]
        for event in client.events():
            if event.get("job_id") == job_id and event["event"] == "chunk_finished":
                assert event["index"] == 0
                assert read_mp4(Path(event["video_partial"]))[0].shape[0] == 9  # plays while it grows
                break
        assert client.request("cancel", job_id=job_id)["status"] == "cancelling"
        events = wait_for(client, job_id)
        job = client.request("get_job", job_id=job_id)["job"]
        listed = client.request("list_jobs", status="cancelled_partial")["jobs"]
    last = events[-1]
    assert last["event"] == "job_cancelled" and last["status"] == "cancelled_partial" and last["partial"]
    assert job["status"] == "cancelled_partial" and job_id in [j["id"] for j in listed]
    done = len(job["chunk_timings"])
    assert 1 <= done < 6 and last["chunks_done"] == done and last["chunks"] == 6
    frames, _ = read_mp4(Path(job["video_path"]))
    assert frames.shape[0] == last["frames"] == 9 + (done - 1) * 8
    folder = Path(job["video_path"]).parent
    assert not list(folder.glob(".*partial*")) and Path(job["thumbnail_path"]).is_file()


def test_a_length_beyond_the_token_budget_is_refused_at_submit_naming_the_maximum(engine):
    with engine.client() as client:
        before = client.request("list_jobs")["total"]
        with pytest.raises(EngineError, match="at most 2825 frames"):
            client.request("submit", params={"prompt": PROMPT, "frames": 99_999})
        with pytest.raises(EngineError, match="overlap"):
            client.request("submit", params={"prompt": PROMPT, "frames": 40, "overlap": 2})
        assert client.request("list_jobs")["total"] == before  # nothing was queued
        accepted = client.request("submit", params={"prompt": PROMPT, "frames": 12, "steps": 1})
        assert accepted["length"]["frames"] == 17 and "rounded up to 17" in accepted["length"]["rounded"]


def test_submit_takes_seconds_says_it_rounds_and_follows_the_chunks(engine):
    args = ("submit", PROMPT, "--model", "tiny", "--seconds", "1.5", "--steps", "1", "--wait")
    result = engine.cli(*args)
    assert result.returncode == 0, result.stderr
    assert "12 frames rounded up to 17" in result.stderr and "2 chunks" in result.stderr
    assert "chunk 1/2 written: 1.1 s of video" in result.stderr and "finished: " in result.stderr
    job_id = result.stdout.strip()
    with engine.client() as client:
        job = client.request("get_job", job_id=job_id)["job"]
    assert job["params"]["frames"] == 12 and read_mp4(Path(job["video_path"]))[0].shape[0] == 17
    refused = engine.cli("submit", PROMPT, "--model", "tiny", "--frames", "3000")
    assert refused.returncode == 2 and "at most 2825 frames" in refused.stderr
