"""The words both clients show for a job's progress (engine/job_words.py): one place, units that are true."""

from __future__ import annotations

from engine import protocol as p
from engine.generation.lengths import limits, rules_for
from engine.job_words import progress_words
from engine.protocol import JobProgressEvent


def progress(stage: str, step: int, total: int, rate: float, **fields) -> JobProgressEvent:
    return JobProgressEvent.model_validate(
        {
            "job_id": "0123456789ab",
            "stage": stage,
            "step": step,
            "total": total,
            "chunk": 1,
            "chunks": 1,
            "rate": rate,
            "eta_s": None,
            "frames_written": 0,
            "video_seconds": 0.0,
            "job_eta_s": None,
            **fields,
        }
    )


def test_a_stage_with_a_unit_shows_its_rate_and_one_without_shows_its_seconds():
    assert progress_words(progress("denoise", 20, 50, 4.0)).detail == "20/50  4.0 steps/s"
    assert progress_words(progress("tokens", 300, 900, 25.0)).detail == "300/900  25.0 tok/s"
    # was "2/2  0.1 /s" and "1/1  0.5 /s": no unit says what was counted
    assert progress_words(progress("text", 2, 2, 0.1)).detail == "2/2  20.0 s"
    assert progress_words(progress("decode", 1, 1, 0.5)).detail == "1/1  2.0 s"
    assert progress_words(progress("write", 0, 1, 0.0)).detail == "0/1"


def test_a_long_videos_bar_names_its_chunk_and_the_job_eta_wins_over_the_stages():
    words = progress_words(progress("denoise", 3, 10, 2.0, chunk=2, chunks=4, eta_s=3.5, job_eta_s=90.0))
    assert words.name == "denoising 2/4" and words.eta_s == 90.0 and words.job_eta
    stage_only = progress_words(progress("tokens", 3, 10, 2.0, eta_s=3.5))  # no cost of the job known yet
    assert stage_only.eta_s == 3.5 and not stage_only.job_eta


def test_a_queued_job_says_why_it_waits():
    from engine.job_words import waiting_words

    def status(**changes) -> p.StatusReply:
        worker = p.WorkerState(label="cuda:0", device=None, state="running", job_id="r", models_loaded=[])
        fields = {
            "model": "tiny",
            "engine_version": "0",
            "pid": 1,
            "uptime_s": 1.0,
            "running": "r",
            "queue": ["a", "b", "c"],
            "models_loaded": [],
            "downloading": False,
            "seq": 0,
            "limits": p.LengthLimits(**limits(rules_for("tiny"))),
            "device": "cpu",
            "memory_used_bytes": None,
            "workers": [worker],
        }
        return p.StatusReply(**{**fields, **changes})

    assert waiting_words(status(), "c") == "2 job(s) ahead of it in the queue"
    assert waiting_words(status(), "a") == "next, as soon as a worker is free"
    assert waiting_words(status(queue_paused=True), "a").startswith(
        "the queue is paused: `landiff-engine queue"
    )
    no_gpu = status(workers=[], no_worker="no node offers the resource GPU")
    assert waiting_words(no_gpu, "a") == "no worker to run it: no node offers the resource GPU"
