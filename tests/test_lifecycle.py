"""A claimed job's transitions (engine/daemon/lifecycle.py), each driven alone: a store, a list for the
events, no pipeline. Each writes the row only while the job runs on its worker, then says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.daemon.lifecycle import JobLifecycle
from engine.daemon.store import Store, result_columns
from engine.generation.job import ChunkDone, JobResult
from engine.protocol import EVENT_ADAPTER, ChunkReport, ChunkTiming, JobOutcome, JobParams, ProgressReport

WORKER = "cpu:0"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "landiff.db")


def claim(store: Store, worker: str = WORKER) -> tuple[JobLifecycle, list]:
    store.add_job(JobParams(prompt="a snail").model_dump(), "tiny", "test")
    row = store.claim_next(worker)
    assert row is not None
    events: list = []
    return JobLifecycle(store, events.append, row.id, worker), events


def timing(index: int) -> ChunkTiming:
    first = 9 * index
    return ChunkTiming(
        index=index,
        first_frame=first,
        last_frame=first + 8,
        denoise_s=1.234567,
        decode_s=0.5,
        write_s=0.25,
        dit_calls=4,
        dit_calls_skipped=1,
    )


def chunk(index: int, chunks: int = 2) -> ChunkDone:
    kept = timing(index)
    assert kept.last_frame is not None
    report = ChunkReport(
        index=index,
        chunks=chunks,
        first_frame=9 * index,
        last_frame=kept.last_frame,
        frames_written=kept.last_frame + 1,
        video_seconds=(kept.last_frame + 1) / 8,
        timings_s=kept.stage_seconds(),
    )
    frames = np.zeros((9, 4, 4, 3), np.uint8)
    return ChunkDone(report, kept, frames, Path("/out/job/.video.mp4.partial"))


def result(chunks_done: int = 2, chunks: int = 2) -> JobResult:
    return JobResult(
        Path("/out/job/video.mp4"),
        Path("/out/job/video.npy"),
        Path("/out/job/video.json"),
        Path("/out/job/video.png"),
        {"text": 0.5, "denoise": 2.5},
        2**20,
        frames=9 * chunks_done,
        fps=8,
        video_frames=9 * chunks_done,
        chunks_done=chunks_done,
        chunks=chunks,
        chunk_timings=[timing(index) for index in range(chunks_done)],
        weights_sha256={"tiny/dit.safetensors": "ab" * 32},
        partial=chunks_done < chunks,
    )


def wire(events: list) -> list[dict]:
    """The events as the engine sends them: each must be one of the protocol's."""
    return [EVENT_ADAPTER.validate_python(event.model_dump()).model_dump() for event in events]


def test_started_and_progress_publish_without_a_write(store):
    lifecycle, events = claim(store)
    lifecycle.started()
    report = ProgressReport(
        stage="denoise",
        step=1,
        total=4,
        chunk=1,
        chunks=2,
        rate=0.123456,
        eta_s=24.3333,
        frames_written=0,
        video_seconds=0.0,
        job_eta_s=None,
    )
    lifecycle.progress(report)
    started, progress = wire(events)
    assert (started["event"], started["job_id"], started["worker"]) == (
        "job_started",
        lifecycle.job_id,
        WORKER,
    )
    assert progress == {
        **report.model_dump(),
        "job_id": lifecycle.job_id,
        "event": "job_progress",
        "v": 1,
        "seq": 0,
    }
    assert (progress["rate"], progress["eta_s"]) == (0.123, 24.33)  # rounded as the model is made


def test_a_recorded_chunk_joins_the_rows_timings_and_names_its_preview(store):
    lifecycle, events = claim(store)
    lifecycle.chunk_recorded(chunk(0), Path("/out/job/chunk-000.png"))
    lifecycle.chunk_recorded(chunk(1), Path("/out/job/chunk-001.png"))
    row = store.get(lifecycle.job_id)
    assert row is not None and row.status == "running"
    assert row.to_summary().chunk_timings == [timing(0), timing(1)]
    assert row.to_summary().chunk_timings[0].denoise_s == 1.2346
    first = wire(events)[0]
    assert first["event"] == "chunk_finished" and first["preview"] == "/out/job/chunk-000.png"
    assert first["video_partial"] == "/out/job/.video.mp4.partial"
    assert first["timings_s"] == {"denoise_s": 1.2346, "decode_s": 0.5, "write_s": 0.25}
    assert (first["index"], first["first_frame"], first["last_frame"], first["frames_written"]) == (
        0,
        0,
        8,
        9,
    )


def test_finished_writes_the_results_columns_then_says_so(store):
    lifecycle, events = claim(store)
    made = result()
    lifecycle.finished(made)
    row = store.get(lifecycle.job_id)
    assert row is not None and row.status == "finished" and row.finished_at is not None
    summary = row.to_summary()
    assert summary.video_path == str(made.video) and summary.sidecar_path == str(made.sidecar)
    assert summary.timings == made.timings_s and summary.chunk_timings == made.chunk_timings
    assert summary.weights_sha256 == made.weights_sha256 and summary.peak_memory_bytes == 2**20
    (finished,) = wire(events)
    assert finished["event"] == "job_finished" and finished["video"] == str(made.video)
    assert (finished["frames"], finished["fps"], finished["video_frames"]) == (18, 8, 18)


def test_the_outcome_is_one_record_each_field_in_a_column_of_its_name(store):
    from engine.daemon.store import JobRow

    assert set(JobOutcome.model_fields) <= set(JobRow.model_fields)  # a new field without a column fails
    assert set(result_columns(result())) == set(JobOutcome.model_fields)
    lifecycle, _ = claim(store)
    made = result()
    lifecycle.finished(made)
    row = store.get(lifecycle.job_id)
    assert row is not None
    kept = row.to_summary().model_dump(include=set(JobOutcome.model_fields))
    assert JobOutcome.model_validate(kept) == made.outcome()


@pytest.mark.parametrize(
    ("interrupted", "status", "kind"),
    [(False, "cancelled", "job_cancelled"), (True, "interrupted", "job_interrupted")],
)
def test_stopped_before_any_chunk_keeps_nothing(store, interrupted, status, kind):
    lifecycle, events = claim(store)
    lifecycle.stopped(interrupted, "stopped at step 2")
    row = store.get(lifecycle.job_id)
    assert row is not None and row.status == status and row.video_path is None
    (event,) = wire(events)
    assert event["event"] == kind and event["partial"] is False


@pytest.mark.parametrize(("interrupted", "status"), [(False, "cancelled_partial"), (True, "interrupted")])
def test_stopped_after_a_chunk_keeps_a_shorter_video(store, interrupted, status):
    lifecycle, events = claim(store)
    kept = result(chunks_done=1, chunks=3)
    lifecycle.stopped(interrupted, "stopped after chunk 1", kept)
    row = store.get(lifecycle.job_id)
    assert row is not None and row.status == status and row.video_path == str(kept.video)
    assert row.to_summary().chunk_timings == [timing(0)]
    (event,) = wire(events)
    assert (event["status"], event["partial"], event["video"]) == (status, True, str(kept.video))
    assert (event["frames"], event["chunks_done"], event["chunks"]) == (9, 1, 3)


def test_failed_keeps_the_message(store):
    lifecycle, events = claim(store)
    lifecycle.failed("frames: at most 97")
    row = store.get(lifecycle.job_id)
    assert row is not None and (row.status, row.error) == ("failed", "frames: at most 97")
    assert wire(events)[0]["event"] == "job_failed" and wire(events)[0]["error"] == "frames: at most 97"


def test_lost_requeues_once_then_interrupts(store):
    lifecycle, events = claim(store)
    lifecycle.lost("the actor died")
    row = store.get(lifecycle.job_id)
    assert row is not None and (row.status, row.requeues) == ("queued", 1)
    again = store.claim_next("cpu:1")
    assert again is not None and again.id == lifecycle.job_id
    second = JobLifecycle(store, events.append, again.id, "cpu:1")
    second.lost("its node went away")
    row = store.get(lifecycle.job_id)
    assert row is not None and row.status == "interrupted"
    assert (
        row.error
        == "worker cpu:1 was lost while running it (its node went away), after it had been re-queued once"
    )
    assert [(event["event"], event.get("worker")) for event in wire(events)] == [
        ("job_requeued", WORKER),
        ("job_interrupted", None),
    ]


def test_lost_while_cancelling_ends_as_cancelled(store):
    lifecycle, events = claim(store)
    lifecycle.lost("the actor died", ending="cancelled")
    row = store.get(lifecycle.job_id)
    assert row is not None and (row.status, row.requeues) == ("cancelled", 0)
    assert row.error == f"worker {WORKER} was lost (the actor died)"
    assert [event["event"] for event in wire(events)] == ["job_cancelled"]


def test_a_job_that_no_longer_runs_here_is_neither_written_nor_announced(store, caplog):
    """Each transition is conditional: once the job has ended (or runs on another worker), a late one
    changes nothing and publishes nothing."""
    lifecycle, events = claim(store)
    lifecycle.failed("the first end")
    elsewhere = JobLifecycle(store, events.append, lifecycle.job_id, "cuda:1")
    for late in (lifecycle, elsewhere):
        late.finished(result())
        late.chunk_recorded(chunk(0), Path("/out/job/chunk-000.png"))
        late.stopped(False, "cancelled", result(chunks_done=1))
    row = store.get(lifecycle.job_id)
    assert row is not None and (row.status, row.error, row.video_path) == ("failed", "the first end", None)
    assert [event["event"] for event in wire(events)] == ["job_failed"]
    assert "no longer runs on worker cpu:0: its end as finished is not recorded" in caplog.text


def test_a_resumed_start_keeps_the_chunks_before_and_a_suspend_queues_the_job_again(store):
    """A long video resumed from its checkpoint (engine/generation/resume.py): its row says where and keeps
    the chunks made before; the engine stopping after a later chunk puts it back in the queue."""
    lifecycle, events = claim(store)
    lifecycle.started(resumed_at_chunk=1, chunks=3, chunk_timings=[timing(0)])
    lifecycle.chunk_recorded(chunk(1, chunks=3), Path("/out/job/chunk-001.png"))
    row = store.get(lifecycle.job_id)
    assert row is not None and row.resumed_at_chunk == 1
    assert row.to_summary().chunk_timings == [timing(0), timing(1)]
    started = wire(events)[0]
    assert (started["event"], started["resumed_at_chunk"], started["chunks"]) == ("job_started", 1, 3)
    lifecycle.suspended("the engine stopped", chunks_done=2, chunks=3)
    row = store.get(lifecycle.job_id)
    assert row is not None and (row.status, row.started_at, row.finished_at) == ("queued", None, None)
    stopped = wire(events)[-1]
    assert (stopped["event"], stopped["status"], stopped["chunks_done"], stopped["chunks"]) == (
        "job_interrupted",
        "queued",
        2,
        3,
    )
    again = store.claim_next("cuda:0")  # at its old place, by any worker
    assert again is not None and again.id == lifecycle.job_id
    fresh, fresh_events = claim(store)
    fresh.started()
    assert wire(fresh_events)[0]["resumed_at_chunk"] is None
    row = store.get(fresh.job_id)
    assert row is not None and row.resumed_at_chunk is None
