"""The engine's workers: one JobWorker per device it owns, each claiming the next queued job when free.

The store's claim is one conditional update, so workers never take the same job and the queue stays
oldest first whatever their number. A worker may join at run time (`add`: a Ray node that joined) and
leaves when its pipeline is lost (WorkerLost). With an LLM lane (token_lane.py), every worker takes its
jobs' tokens from the lane and runs stage 2 only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from engine.daemon.store import Store
from engine.daemon.token_lane import TokenLane
from engine.daemon.worker import JobWorker

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, store: Store, workers: Iterable[JobWorker] = (), lane: TokenLane | None = None):
        """The pool of `workers` (and their LLM `lane`, if any), not started yet (`start`)."""
        self.store, self.lane = store, lane
        self.lock = threading.Lock()
        self.workers: list[JobWorker] = []
        self.no_worker: str | None = None  # why it has none, where its owner knows (ray_workers.RayWorkers)
        for worker in workers:
            self.include(worker)

    def include(self, worker: JobWorker) -> None:
        worker.on_lost = self.remove
        worker.lane = self.lane
        with self.lock:
            self.workers.append(worker)

    def start(self) -> None:
        if self.lane is not None:
            self.lane.start()
        for worker in self.members():
            if worker.ident is None:
                worker.start()

    def add(self, worker: JobWorker) -> None:
        """A worker joining at run time: included and started, it claims the next queued job."""
        self.include(worker)
        worker.start()
        log.info("worker %s joined: %d worker(s)", worker.label, len(self.members()))

    def remove(self, worker: JobWorker) -> None:
        """A worker leaves (its pipeline was lost); the others are woken for the job it gave back."""
        with self.lock:
            if worker not in self.workers:
                return
            self.workers.remove(worker)
            left = len(self.workers)
        if left:
            log.warning("worker %s left: %d worker(s) remain", worker.label, left)
        else:
            log.error(
                "worker %s left and it was the last: queued jobs wait for a worker to join", worker.label
            )
        self.notify()

    def members(self) -> list[JobWorker]:
        with self.lock:
            return list(self.workers)

    # called from the asyncio side

    def notify(self) -> None:
        """A job was queued: every idle worker looks (the first to claim it runs it), and the lane."""
        if self.lane is not None:
            self.lane.notify()
        for worker in self.members():
            if worker.current is None:
                worker.notify()

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: "cancelled" when it was still queued, "cancelling" when a worker runs it (it
        stops at its next step), None when neither. Blocks on the store (call it off the event loop).

        A claim that beat the queued cancel is current on its worker by the time this takes that
        worker's lock (JobWorker.cancel says why). A second pass covers a job that a lost worker put
        back in the queue meanwhile; that happens once per job, so two passes decide. The lane forgets
        the job's tokens (or stops making them)."""
        if self.lane is not None:
            self.lane.drop(job_id)
        for _ in range(2):
            if self.store.cancel_queued(job_id):
                return "cancelled"
            if any(worker.stop_job(job_id) for worker in self.members()):
                return "cancelling"
        return None

    def request_release(self) -> None:
        if self.lane is not None:
            self.lane.request_release()
        for worker in self.members():
            worker.request_release()

    def stop(self) -> None:
        if self.lane is not None:
            self.lane.stop()
        for worker in self.members():
            worker.stop()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.members():
            worker.join(max(0.0, deadline - time.monotonic()))
        if self.lane is not None and self.lane.ident is not None:
            self.lane.join(max(0.0, deadline - time.monotonic()))

    # what status shows

    @property
    def torch_ready(self) -> bool:
        lane = self.lane is not None and self.lane.torch_ready
        return lane or any(worker.torch_ready for worker in self.members())

    def running(self) -> list[str]:
        """The running jobs' ids, in the order of the workers running them."""
        return [job_id for job_id in (worker.current for worker in self.members()) if job_id is not None]

    def loaded_models(self) -> list[str]:
        """The models loaded on any worker or the lane."""
        lane = [] if self.lane is None else self.lane.loaded_models()
        return sorted({*lane, *(name for worker in self.members() for name in worker.loaded_models())})

    def view(self) -> list[dict[str, Any]]:
        """Each worker: its label, device, state (loading, idle, running), job and loaded models."""
        return [worker.view() for worker in self.members()]

    def lane_view(self) -> dict[str, Any] | None:
        """The LLM lane: its device, what it makes, the jobs whose tokens wait (None: no lane)."""
        return None if self.lane is None else self.lane.view()
