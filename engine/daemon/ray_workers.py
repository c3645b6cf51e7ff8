"""`serve --ray auto|ADDRESS`: the engine's workers are Ray actors on a cluster's boxes, one per GPU.

Each worker is a JobWorker like a local one; its pipeline is a RemotePipeline (ray_pipeline.py) that runs
the job in its actor (ray_actor.py), so the events, the store and the outputs are those of a local job.
`RayWorkers` watches the cluster and adds a worker for every unit of the chosen resource (GPU, or a custom
one) on a live node, so a box that joins adds capacity; a node that leaves takes its actors with it, and the
job one was running goes back to the queue once (WorkerLost). ray is imported only inside these calls, and
only once `--ray` is used.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.daemon.backend import PipelineFactory
from engine.daemon.config import RunOptions
from engine.daemon.ray_pipeline import RemotePipeline, actor_class, control, first_line
from engine.daemon.startup import StartRefused

if TYPE_CHECKING:
    from ray.actor import ActorClass

    from engine.daemon.pool import WorkerPool
    from engine.daemon.ray_actor import PipelineHost
    from engine.daemon.worker import JobWorker

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 30.0  # joining a cluster that does not answer by then is refused
DISCOVERY_INTERVAL_S = 1.0  # how often the cluster's nodes are read: a joining box is used within this
ACTOR_READY_TIMEOUT_S = 300.0  # an actor not ready by then (its resource taken elsewhere, say) is given up
RETRY_AFTER_S = 30.0  # a node where an actor failed to start is tried again after this


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Join an existing Ray cluster as a client; one line (StartRefused) when none answers. Never starts
    a Ray instance of its own (that would listen on the network).

    ray.init retries an address where nothing answers for ever, so it runs in a thread given `timeout_s`,
    after a plain TCP check of a HOST:PORT address that refuses a closed port at once."""
    hint = (
        "start one with `ray start --head` on one box (and `ray start --address HEAD:6379` on the others), "
        "or give its address"
    )
    # a Ray call made while not connected (a late one, after the stop) must fail, not start a local Ray
    # instance that listens on the network: ray reads this once, at its import, which follows
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    try:
        import ray  # noqa: F401
    except ImportError:
        raise StartRefused(
            f"--ray {address}: Ray is not installed here; pip install 'landiff-tui[ray]' (on every box)"
        ) from None
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError as error:
            raise StartRefused(f"--ray {address}: nothing answers there ({error}); {hint}") from None
    failure: list[BaseException] = []

    def join() -> None:
        import ray

        try:
            ray.init(address=address, namespace="landiff", log_to_driver=False, configure_logging=False)
        except BaseException as error:  # reported by the caller's thread
            failure.append(error)

    joining = threading.Thread(target=join, name="landiff-ray-connect", daemon=True)
    joining.start()
    joining.join(timeout_s)
    if joining.is_alive():
        raise StartRefused(f"--ray {address}: no Ray cluster answered within {timeout_s:g} s; {hint}")
    if failure:
        raise StartRefused(f"--ray {address}: no Ray cluster to join ({first_line(failure[0])}); {hint}")
    log.info("joined the Ray cluster at %s", address)


def disconnect() -> None:
    import ray

    ray.shutdown()


@dataclass
class Starting:
    """An actor started on a node, not ready yet (its process loads torch and the pipeline's code)."""

    actor: Any
    node_id: str
    slot: int
    deadline: float


class RayWorkers(threading.Thread):
    """Keeps one worker per unit of `resource` on every live node of the cluster. Every second it reads the
    nodes: where a node offers more units than it has workers (it joined, or an actor of it was lost) it
    starts actors, all at once; each that reports ready becomes a JobWorker in the pool. An idle worker of a
    node that left is retired."""

    def __init__(
        self,
        resource: str,
        model: str,
        ckpts: Path | None,
        run_options: RunOptions,
        new_worker: Callable[[PipelineFactory, str, str], JobWorker],
        pool: WorkerPool,
    ):
        """`resource`: GPU (one actor per GPU, num_gpus=1) or a custom resource name (one actor per unit);
        `new_worker(make_pipeline, label, device)` builds a JobWorker (not started) for `pool`."""
        super().__init__(name="landiff-ray-discovery", daemon=True)
        self.resource, self.new_worker, self.pool = resource, new_worker, pool
        self.host_args = (model, None if ckpts is None else str(ckpts), run_options)
        self.workers: dict[str, list[JobWorker]] = {}  # node id -> its workers in the pool
        self.starting: dict[Any, Starting] = {}  # the ready() call's ref -> the actor it waits for
        self.started: dict[str, int] = {}  # node id -> actors started there so far (labels stay unique)
        self.retry_at: dict[str, float] = {}  # node id -> when to try again after a failed start
        self.stopping = threading.Event()
        self.actor_class: ActorClass[PipelineHost] | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.actor_class = actor_class()
        warm = False
        while not self.stopping.is_set():
            try:
                self.survey()
            except Exception:  # the cluster's state could not be read: try again
                log.exception("reading the Ray cluster failed; retrying")
            if not warm:  # what each worker thread imports before its first claim, while the actors start
                import engine.generation.job  # noqa: F401
                import engine.generation.pipeline  # noqa: F401

                warm = True
            self.stopping.wait(DISCOVERY_INTERVAL_S)
        self.give_up(list(self.starting), "the engine stops")

    def survey(self) -> None:
        import ray

        self.collect_ready()
        alive = {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}
        for node_id, node in alive.items():
            units = int(node.get("Resources", {}).get(self.resource, 0))
            working = [worker for worker in self.workers.get(node_id, []) if worker_usable(worker)]
            self.workers[node_id] = working
            starting = sum(1 for start in self.starting.values() if start.node_id == node_id)
            if time.monotonic() >= self.retry_at.get(node_id, 0.0):
                for _ in range(units - len(working) - starting):
                    self.start_actor(node_id)
        for node_id in [node_id for node_id in self.workers if node_id not in alive]:
            gone = self.workers.pop(node_id)
            if gone:
                log.warning("Ray node %s left the cluster with %d worker(s)", node_id[:8], len(gone))
            for worker in gone:
                self.retire(worker, f"its Ray node {node_id[:8]} left the cluster")

    def start_actor(self, node_id: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self.actor_class is not None  # run() makes it before its first survey
        slot = self.started.get(node_id, 0)
        self.started[node_id] = slot + 1
        placement = {"num_gpus": 1} if self.resource == "GPU" else {"resources": {self.resource: 1}}
        actor = self.actor_class.options(
            **placement, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(*self.host_args)
        deadline = time.monotonic() + ACTOR_READY_TIMEOUT_S
        self.starting[control(actor.ready).remote()] = Starting(actor, node_id, slot, deadline)

    def collect_ready(self) -> None:
        """Actors that reported ready join the pool; those that failed or took too long are given up."""
        import ray

        if not self.starting:
            return
        ready, waiting = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in ready:
            start = self.starting.pop(ref)
            try:
                where = ray.get(ref)
            except Exception as error:  # it died starting (its node left, its box cannot import the engine)
                self.failed(start, first_line(error))
                continue
            self.admit(start, where)
        late = [ref for ref in waiting if time.monotonic() > self.starting[ref].deadline]
        self.give_up(late, f"not ready after {ACTOR_READY_TIMEOUT_S:g} s (is its resource taken elsewhere?)")

    def admit(self, start: Starting, where: dict[str, str]) -> None:
        label = f"ray:{start.node_id[:8]}:{start.slot}"
        device = f"{where['ip']} {where['device']}"
        actor = start.actor
        worker = self.new_worker(lambda: RemotePipeline(actor, label), label, device)
        worker.checkpoints = False  # the actor writes the job's files in its own folder
        self.workers.setdefault(start.node_id, []).append(worker)
        self.pool.add(worker)
        log.info("worker %s added: an actor on %s (Ray node %s)", label, device, start.node_id[:8])

    def give_up(self, refs: list, why: str) -> None:
        import ray

        for ref in refs:
            start = self.starting.pop(ref)
            ray.kill(start.actor)
            self.failed(start, why)

    def failed(self, start: Starting, why: str) -> None:
        log.warning("no actor started on Ray node %s: %s", start.node_id[:8], why)
        self.retry_at[start.node_id] = time.monotonic() + RETRY_AFTER_S

    def retire(self, worker: JobWorker, why: str) -> None:
        """An idle worker whose actor is gone claims no more jobs and leaves the pool. A busy one is left
        alone: its job's stream fails, and WorkerLost puts the job back in the queue."""
        with worker.lock:  # the lock a claim takes: no job becomes current while this looks
            if worker.current is not None:
                return
            worker.lost = why
        worker.notify()
        self.pool.remove(worker)


def worker_usable(worker: JobWorker) -> bool:
    """Whether a worker still takes jobs (not lost, not stopped)."""
    return worker.lost is None and not worker.stopping.is_set() and worker.is_alive()
