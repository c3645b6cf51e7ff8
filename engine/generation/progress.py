"""Progress clocks: step callbacks -> progress reports (protocol.ProgressReport) with rates, and the whole
job's time left, estimated from the stages' measured speeds and the history of finished jobs."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from engine.generation.lengths import ChunkPlan
from engine.protocol import ChunkTiming, ProgressReport

if TYPE_CHECKING:
    from engine.protocol import Stage

log = logging.getLogger(__name__)


class StageClock:
    """Turns step callbacks into progress reports with a rate and an ETA."""

    def __init__(self, stage: Stage, emit: Callable[[ProgressReport], None] | None, job: JobClock):
        self.stage, self.emit, self.job, self.started = stage, emit, job, time.perf_counter()

    def __call__(self, step: int, total: int, preview: np.ndarray | None = None) -> None:
        """`preview`: a live preview of this step's denoised estimate (uint8 [H, W, 3]), carried by the
        report (ProgressReport.preview, not on the wire: the engine writes it to a file)."""
        if self.emit is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = step / elapsed
        eta = (total - step) / rate if rate > 0 else None
        job = self.job
        report = ProgressReport(
            stage=self.stage,
            step=step,
            total=total,
            chunk=job.chunk + 1,
            chunks=job.plan.chunks,
            rate=rate,
            eta_s=eta,
            frames_written=job.frames_written,
            video_seconds=job.frames_written / job.plan.fps,
            job_eta_s=job.eta(self.stage, step, total, eta),
            dit_calls=job.dit_calls,
            cache_skips=job.dit_calls_skipped,
        )
        report.preview = preview
        self.emit(report)

    def seconds(self) -> float:
        return time.perf_counter() - self.started


PRIOR_WEIGHT = 4  # a prior cost counts as this many measured denoising steps (or tenths of the tokens)


def blended(measured_s: float, count: float, prior: float | None, weight: float) -> float | None:
    """Seconds per unit: what this job measured over `count` units, leaning on the prior (the history's
    per-unit cost, weighing as `weight` units) while few are measured; None with neither."""
    if prior is None:
        return measured_s / count if count else None
    return (measured_s + weight * prior) / (count + weight)


class JobClock:
    """Where a job stands (chunk, frames on disk) and an estimate of the time it has left.

    Each stage's cost is what this job measured so far, leaning on `learned` while little is measured:
    the costs of the pipeline's earlier jobs, seeded from the engine's history of finished jobs of the
    same model on the same device (`prior_costs`). Its keys: denoise_step_s, chunk_finish_s (decode and
    write of a chunk), text_s (both text encoders), tokens_segment_s (the language model's, per segment).
    """

    def __init__(self, plan: ChunkPlan, steps: int, learned: dict[str, float]):
        self.plan, self.steps, self.learned = plan, steps, learned
        self.chunk, self.frames_written = 0, 0  # the chunk being made (0-based), frames on disk
        self.finished = 0  # chunks in the video file
        self.chunk_timings: list[ChunkTiming] = []
        self.thumbnail: np.ndarray | None = None  # the middle frame of chunk 0
        self.denoise_s = 0.0
        self.denoise_steps = 0
        self.finish_s: list[float] = []  # decode + write of each finished chunk
        self.dit_calls = 0  # so far, one per CFG branch and denoising step
        self.dit_calls_skipped = 0  # of those, answered by the step cache

    def step_seconds(self) -> float | None:
        prior = self.learned.get("denoise_step_s") or None
        return blended(self.denoise_s, self.denoise_steps, prior, PRIOR_WEIGHT)

    def finish_seconds(self) -> float | None:
        prior = self.learned.get("chunk_finish_s") or None
        return blended(sum(self.finish_s), len(self.finish_s), prior, 1)

    def tokens_seconds(self, step: int, total: int, stage_eta: float | None) -> float:
        """The language model's seconds left at position `step` of `total`: its measured speed, leaning on
        the history's while few positions are written (0 when neither is known)."""
        prior_job = self.learned.get("tokens_segment_s")
        prior = prior_job * self.plan.segments / total if prior_job and total else None
        measured = stage_eta / (total - step) * step if stage_eta is not None and total > step else 0.0
        per = blended(measured, step, prior, total / 10)
        return (total - step) * per if per is not None else (stage_eta or 0.0)

    def learn(self, key: str, seconds: float) -> None:
        """A cost this job measured, for the next job's estimate (`learned` is the pipeline's)."""
        if seconds > 0:
            self.learned[key] = seconds

    def learn_tokens(self, seconds: float) -> None:
        self.learn("tokens_segment_s", seconds / max(self.plan.segments, 1))

    def eta(self, stage: str, step: int, total: int, stage_eta: float | None) -> float | None:
        """Seconds the whole job has left: None until a denoising step has been timed (here or before)."""
        per_step = self.step_seconds()
        if per_step is None:
            return None
        per_finish = self.finish_seconds() or 0.0  # unknown until a chunk was decoded: counted as free
        chunk_cost = self.steps * per_step + per_finish
        video_text = self.learned.get("text_s", 0.0) / 2  # stage 2's T5, after the tokens
        if stage == "text" and step < total:  # flan-T5 done (1 of 2): the tokens and stage 2's T5 to come
            tokens = self.tokens_seconds(0, 1, None) if self.learned.get("tokens_segment_s") else 0.0
            video_text = video_text or stage_eta or 0.0  # as long as flan-T5 took, when nothing is known
            return tokens + video_text + self.plan.chunks * chunk_cost
        if stage == "tokens":
            return self.tokens_seconds(step, total, stage_eta) + video_text + self.plan.chunks * chunk_cost
        if stage == "text":
            return self.plan.chunks * chunk_cost
        after = self.plan.chunks - self.chunk - 1  # chunks after the current one
        if stage == "denoise":
            return (self.steps - step) * per_step + per_finish + after * chunk_cost
        return (stage_eta or 0.0) + after * chunk_cost


HISTORY_JOBS = 10  # the latest finished jobs of a model on a device that seed its ETA


def prior_costs(model: str, device: str, database: Path | None = None) -> dict[str, float]:
    """The costs a job's ETA starts from (JobClock's `learned`): the medians over the engine's latest
    finished jobs of `model` whose record says they ran on `device` (as str(torch.device) writes it). Read
    only, straight from the engine's database (engine/daemon/store.py's jobs table) and the jobs' records;
    {} when there is none or it cannot be read: an estimate never stops a job."""
    from engine.paths import database_path

    path = database_path() if database is None else database
    if not path.is_file():
        return {}
    try:
        return history_costs(model, device, finished_jobs(path, model))
    except (OSError, sqlite3.Error, ValueError, TypeError, KeyError) as error:
        log.info("no ETA from the job history %s: %s", path, error)
        return {}


def finished_jobs(path: Path, model: str) -> list[tuple[str, ...]]:
    """(params, timings, chunk_timings, sidecar_path) of the latest finished jobs of `model`."""
    with contextlib.closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(
            "SELECT params, timings, chunk_timings, sidecar_path FROM jobs WHERE model = ? AND "
            "status = 'finished' AND sidecar_path IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (model, 4 * HISTORY_JOBS),  # some may have run on another device
        ).fetchall()


def history_costs(model: str, device: str, rows: list[tuple[str, ...]]) -> dict[str, float]:
    from engine.generation.lengths import plan_length, rules_for

    rules = rules_for(model)
    costs: dict[str, list[float]] = {}
    used = 0
    for params_json, timings_json, chunks_json, sidecar in rows:
        if used == HISTORY_JOBS:
            break
        try:
            record = json.loads(Path(sidecar).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("device") != device:
            continue
        params, timings, chunks = json.loads(params_json), json.loads(timings_json), json.loads(chunks_json)
        plan = plan_length(rules, params.get("frames"), params.get("overlap"))
        steps = params.get("steps")
        used += 1
        if chunks and isinstance(steps, int) and steps > 0:
            denoise = sum(chunk["denoise_s"] for chunk in chunks) - timings.get("compile", 0.0)
            costs.setdefault("denoise_step_s", []).append(denoise / (len(chunks) * steps))
            finish = sum(chunk["decode_s"] + chunk["write_s"] for chunk in chunks) / len(chunks)
            costs.setdefault("chunk_finish_s", []).append(finish)
        if "text" in timings:
            costs.setdefault("text_s", []).append(timings["text"])
        if "tokens" in timings and (record.get("stage1") or {}).get("device") != "file":
            tokens = timings["tokens"] - timings.get("tokens_compile", 0.0)
            costs.setdefault("tokens_segment_s", []).append(tokens / plan.segments)
    medians = {key: float(np.median(values)) for key, values in costs.items()}
    return {key: seconds for key, seconds in medians.items() if seconds > 0}
