"""The quality probe: measures finished jobs after the fact, never slowing one that runs.

One thread, at the lowest CPU priority (nice 19 on Linux, which the threads its torch starts inherit),
on the CPU whatever device the jobs use. It takes finished jobs without a quality record one at a time,
newest first (a job that has just finished comes first: the worker's job_finished wakes it), and jobs a
client asked to measure again before those. For each it reads the video back
(engine/generation/quality.py), writes the store's `quality` column and the sidecar's `quality` block
(atomically, only when the sidecar is still there), and publishes `job_quality`. Without the CLIP
weights the CLIP score is skipped, saying how to get them; flicker and motion need no weights. A video
that cannot be read is recorded with its error, so no job is tried again and again: one that is not a
regular file (a FIFO, a device, a folder) is refused before any process opens it, and every ffmpeg the
probe starts is bounded in time by the video's size and killed with its process group past that bound or
as soon as the engine stops (engine/generation/quality.py), so the probe's one thread never hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from engine import settings
from engine.daemon.events import Publisher
from engine.daemon.store import JobRow, Store
from engine.generation.video_quality import add_to_sidecar, clip_name, measure_video
from engine.protocol import JobQualityEvent, QualityRecord
from engine.weights.layout import CLIP_REPO

if TYPE_CHECKING:
    from engine.generation.quality import Clip

log = logging.getLogger(__name__)
PROBED_STATUSES = ("finished", "cancelled_partial")  # the jobs that keep a video
SWEEP_S = 60.0  # a look at the store now and then, for jobs no event announced (an engine restarted)
READY_WAIT_S = 0.5
READY_LIMIT_S = 300.0  # workers that never import torch here (remote ones) do not hold the probe back


def lower_priority() -> None:
    """The calling thread (and the threads it starts) at nice 19: a job's threads always go first."""
    if sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS with a thread id names a process
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as error:
            log.warning("the quality probe runs at normal priority: %s", error)


class QualityProbe(threading.Thread):
    def __init__(
        self,
        store: Store,
        publish: Publisher,
        root: Path,
        clip_name: str = CLIP_REPO,
        ready: Callable[[], bool] = lambda: True,
        automatic: bool = True,
    ):
        """`root`: the model's weights root (the CLIP sits in its CLIP_FOLDER); `ready`: whether the
        workers have imported torch (the probe imports it after them, never at the same time);
        `automatic`: measure every finished job (else only the jobs `request` names)."""
        super().__init__(name="landiff-quality-probe", daemon=True)
        self.store, self.publish, self.root = store, publish, root
        self.clip_name, self.ready, self.automatic = clip_name, ready, automatic
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.requested: deque[str] = deque()
        self.lock = threading.Lock()
        self.follower: asyncio.Task | None = None  # start_quality_probe's

    # from the engine's other threads

    def notify(self) -> None:
        self.wake.set()

    def request(self, job_id: str) -> None:
        """Measure `job_id` (again) before any other."""
        with self.lock:
            if job_id not in self.requested:
                self.requested.append(job_id)
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.follower is not None:
            self.follower.cancel()

    async def follow(self, events) -> None:
        """Wake on every job_finished (an asyncio task reading the hub's subscription queue)."""
        while True:
            message = await events.get()
            if message["event"] in ("job_finished", "job_cancelled") and message.get("video"):
                self.notify()

    # the probe's thread

    def run(self) -> None:
        lower_priority()
        waited_until = time.monotonic() + READY_LIMIT_S
        while not self.stopping.is_set() and not self.ready() and time.monotonic() < waited_until:
            self.stopping.wait(READY_WAIT_S)  # torch is the workers' to import first
        clip: Clip | None = None
        while not self.stopping.is_set():
            try:
                row = self.next_job()
                if row is None:
                    clip = None  # nothing to do: the CLIP's memory goes back
                    self.wake.wait(SWEEP_S)
                    self.wake.clear()
                    continue
                clip = self.measure(row, clip)
            except Exception:  # the probe must outlive any surprise (a locked database, a full disk)
                log.exception("quality probe error; retrying in a few seconds")
                self.stopping.wait(5.0)

    def next_job(self) -> JobRow | None:
        with self.lock:
            while self.requested:
                row = self.store.get(self.requested.popleft())
                if row is not None and row.status in PROBED_STATUSES and row.video_path:
                    return row
        if not self.automatic:
            return None
        with self.store.session() as session:
            query = (
                select(JobRow)
                .where(col(JobRow.status).in_(PROBED_STATUSES), col(JobRow.quality).is_(None))
                .where(col(JobRow.video_path).is_not(None))
                .order_by(col(JobRow.finished_at).desc())
            )
            return session.exec(query.limit(1)).first()

    def measure(self, row: JobRow, clip: Clip | None) -> Clip | None:
        """Probe one job, record and announce what was found; returns the CLIP loaded for the next."""
        from engine.generation.quality import ProbeStopped

        assert row.video_path is not None  # next_job hands out only jobs with a video
        try:
            record, clip = measure_video(
                Path(row.video_path), row.prompt, self.root, self.clip_name, clip, self.stopping.is_set
            )
        except ProbeStopped:
            log.info("quality probe of job %s left for the next start: the engine is stopping", row.id)
            return clip
        if record.get("error"):
            log.warning("quality probe of job %s failed: %s", row.id, record["error"])
        self.record(row, record)
        return clip

    def record(self, row: JobRow, record: dict[str, Any]) -> None:
        if self.store.get(row.id) is None:
            return  # deleted meanwhile: nothing to write, its folder stays gone
        if row.sidecar_path and Path(row.sidecar_path).is_file():
            sidecar = Path(row.sidecar_path)
            try:
                add_to_sidecar(sidecar, record)
            except (OSError, ValueError, TypeError) as error:  # the store still gets it: no probe loops
                log.warning("job %s: the sidecar %s keeps no quality block: %s", row.id, sidecar, error)
        try:
            self.store.update(row.id, quality=record)
        except KeyError:
            return
        self.publish(JobQualityEvent(job_id=row.id, quality=QualityRecord.model_validate(record)))
        clip = record.get("clip")
        log.info(
            "job %s quality: flicker %s, motion %s, CLIP %s (%.1f s)",
            row.id,
            record.get("flicker"),
            record.get("motion"),
            f"mean {clip['mean']:.2f}, min {clip['min']:.2f}" if clip else record.get("skipped") or "-",
            record.get("seconds") or 0.0,
        )


def start_quality_probe(
    model: str, ckpts: Path | None, store: Store, hub, ready: Callable[[], bool]
) -> QualityProbe:
    """The engine's probe thread, started, and the task (on the running loop) that wakes it after each
    job that kept a video. `ready`: whether the workers have imported torch."""
    from engine.weights.layout import layout_for

    root = layout_for(model, ckpts).root
    automatic = settings.quality_probe_on()
    probe = QualityProbe(store, hub.publish, root, clip_name(model), ready, automatic=automatic)
    probe.start()
    probe.follower = asyncio.get_running_loop().create_task(probe.follow(hub.subscribe()))
    return probe
