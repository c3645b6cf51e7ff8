"""The words both clients show for a job's progress (engine/job_words.py): one place, units that are true."""

from __future__ import annotations

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
