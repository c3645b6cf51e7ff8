"""`serve --ray auto|ADDRESS`: the engine's workers are Ray actors on a cluster's boxes, one per GPU.

Each worker is a JobWorker like a local one; its pipeline is a `RemotePipeline` that runs the job in its actor
(engine/daemon/ray_actor.py) and replays what the actor streams back through the engine's own callbacks, so
the events, the store and the outputs are those of a local job. `RayWorkers` watches the cluster and adds a
worker for every unit of the chosen resource (GPU, or a custom one) on a live node, so a box that joins adds
capacity; a node that leaves takes its actors with it, and the job one was running goes back to the queue once
(WorkerLost). ray is imported only here, and only once `--ray` is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomic import partial_path, write_atomically
from engine.daemon.ray_actor import ChunkSent, Loaded, Outcome, PipelineHost, SentFiles
from engine.daemon.startup import StartRefused
from engine.daemon.worker import WorkerLost

if TYPE_CHECKING:
    from engine.daemon.pool import WorkerPool
    from engine.daemon.worker import JobWorker
    from engine.generation.job import ChunkDone, JobResult, JobSpec, Progress

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 30.0  # joining a cluster that does not answer by then is refused
DISCOVERY_INTERVAL_S = 1.0  # how often the cluster's nodes are read: a joining box is used within this
ACTOR_READY_TIMEOUT_S = 300.0  # an actor that cannot start by then (its resource taken elsewhere) is retried
WAIT_S = 0.1  # how long the engine waits on the stream before it looks at should_stop again
CANCEL_RESEND_S = 1.0  # a cancel is sent again while the job runs on (one sent before the job began is lost)


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Join an existing Ray cluster as a client; one line (StartRefused) when none answers. Never starts
    a Ray instance of its own (that would listen on the network).

    ray.init retries an address where nothing answers for ever, so it runs in a thread given `timeout_s`,
    after a plain TCP check of a HOST:PORT address that refuses a closed port at once."""
    hint = (
        "start one with `ray start --head` on one box (and `ray start --address HEAD:6379` on the others), "
        "or give its address"
    )
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


def actor_class():
    """The Ray actor of PipelineHost: one job at a time in its default group, and cancel / release in a
    group of their own so that they reach it while a job runs."""
    import ray

    return ray.remote(concurrency_groups={"control": 1}, max_restarts=0)(PipelineHost)


def control(method):
    """A call to the actor's control group (it runs beside the job)."""
    return method.options(concurrency_group="control")


def lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for an actor (or the node under it) that is gone: its job's worker is lost."""
    from ray import exceptions

    return (
        exceptions.RayActorError,  # also ActorDiedError and ActorUnavailableError
        exceptions.ObjectLostError,
        exceptions.NodeDiedError,
        exceptions.WorkerCrashedError,
    )


class RemotePipeline:
    """A Pipeline-shaped handle on an actor: `run` has Pipeline.run's signature and effects (events through
    the callbacks, the job's files written atomically under job.out's folder, JobCancelled on a cancel);
    `loaded_models` and `weight_bytes` answer what the actor last reported. Dropping it (the worker
    released its models after its idle time) makes the actor drop them too."""

    def __init__(self, actor, label: str):
        self.actor, self.label = actor, label
        self.loaded = Loaded([], 0)
        weakref.finalize(self, release_actor, actor).atexit = False  # at exit the actors go with the engine

    def loaded_models(self) -> list[str]:
        return list(self.loaded.models)

    def weight_bytes(self) -> int:
        return self.loaded.weight_bytes

    def run(
        self,
        job: JobSpec,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_chunk: Callable[[ChunkDone], None] | None = None,
    ) -> JobResult:
        from engine.generation.job import JobCancelled

        tokens = None
        if job.tokens is not None:
            try:
                tokens = job.tokens.read_bytes()
            except OSError as error:
                raise ValueError(f"--tokens {job.tokens} cannot be read: {error.strerror}") from None
        mirror = VideoMirror(job.out)
        try:
            outcome = self.follow(job, tokens, mirror, on_progress, should_stop, on_chunk)
            if outcome.status == "failed":
                raise outcome.error or RuntimeError(f"the job failed on {self.label}")
            if outcome.files is None:
                raise JobCancelled(outcome.message or "cancelled")
            result = land(job, outcome.files, mirror, self.label)
        except BaseException:
            mirror.abort()
            raise
        if outcome.status == "cancelled":
            raise JobCancelled(outcome.message, result)
        return result

    def follow(self, job, tokens, mirror, on_progress, should_stop, on_chunk) -> Outcome:
        """Start the job on the actor and replay its stream here until its outcome."""
        import ray
        from ray.exceptions import RayTaskError

        from engine.generation.job import ChunkDone, Progress

        lost = lost_errors()
        cancel_sent = -math.inf
        ended = False
        try:
            stream = self.actor.run.options(num_returns="streaming").remote(
                job.params(), job.out.name, tokens
            )
            while True:
                stop = should_stop is not None and should_stop()
                if stop and time.monotonic() - cancel_sent > CANCEL_RESEND_S:
                    control(self.actor.cancel).remote()
                    cancel_sent = time.monotonic()
                ready, _ = ray.wait([stream], timeout=WAIT_S)
                if not ready:
                    continue
                try:
                    item = ray.get(next(stream))
                except StopIteration:
                    raise WorkerLost(f"{self.label}: its job's stream ended without an outcome") from None
                if isinstance(item, Progress):
                    if on_progress is not None:
                        on_progress(item)
                elif isinstance(item, ChunkSent):
                    mirror.append(item.video_tail)
                    if on_chunk is not None:
                        on_chunk(chunk_done(ChunkDone, item, mirror.partial))
                elif isinstance(item, Loaded):
                    self.loaded = item
                elif isinstance(item, Outcome):
                    ended = True
                    return item
        except lost as error:
            ended = True
            raise WorkerLost(f"{self.label}: {first_line(error)}") from None
        except RayTaskError as error:  # the actor's own machinery failed (not the job: that is an Outcome)
            raise RuntimeError(f"on {self.label}: {first_line(error)}") from None
        finally:
            if not ended:  # the engine side failed (its disk, a callback): the actor stops the job too
                with contextlib.suppress(Exception):  # the actor went meanwhile: nothing left to stop
                    control(self.actor.cancel).remote()


class VideoMirror:
    """The engine's copy of the actor's growing video: the chunks' bytes appended to job.out's partial
    name (playable after every chunk), hashed as they come, renamed into place once the hash matches."""

    def __init__(self, out: Path):
        self.out, self.partial = out, partial_path(out)
        self.file = None
        self.digest = hashlib.sha256()
        self.size = 0

    def append(self, data: bytes) -> None:
        if self.file is None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.partial, "wb")  # noqa: SIM115 - closed by finish() or abort()
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.digest.update(data)
        self.size += len(data)

    def finish(self, size: int, sha256: str) -> Path:
        if self.file is None:
            raise ValueError("the actor sent a video without any chunk")
        self.file.close()
        if (self.size, self.digest.hexdigest()) != (size, sha256):
            raise ValueError(
                f"the video copied from the actor differs from its own ({self.size} of {size} bytes)"
            )
        os.replace(self.partial, self.out)
        return self.out

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
        self.partial.unlink(missing_ok=True)


def chunk_done(chunk_class, sent: ChunkSent, partial_video: Path) -> ChunkDone:
    """The engine's ChunkDone for a chunk the actor finished: its frames are the preview frame only (what
    the engine uses of them), its partial video the engine's copy."""
    return chunk_class(
        index=sent.index,
        chunks=sent.chunks,
        first_frame=sent.first_frame,
        last_frame=sent.last_frame,
        frames_written=sent.frames_written,
        video_seconds=sent.video_seconds,
        timings_s=sent.timings_s,
        frames=sent.preview[None],
        partial_video=partial_video,
    )


def land(job: JobSpec, files: SentFiles, mirror: VideoMirror, label: str) -> JobResult:
    """Write a remote job's files beside job.out as the pipeline writes a local one's (tokens, thumbnail,
    the video, then the record that makes them reproducible; each complete or absent) and return its
    result with the engine's paths."""
    from engine.generation.outputs import write_record

    tokens, thumbnail, sidecar = (job.out.with_suffix(suffix) for suffix in (".npy", ".png", ".json"))
    try:
        write_atomically(tokens, lambda partial: partial.write_bytes(files.tokens))
        write_atomically(thumbnail, lambda partial: partial.write_bytes(files.thumbnail))
        mirror.finish(files.video_size, files.video_sha256)
        record = dict(files.record)
        record["job"] = {**record["job"], "out": str(job.out), "tokens": none_or_str(job.tokens)}
        record["tokens"] = str(tokens)
        record["worker"] = label
        write_record(sidecar, record)
    except BaseException:
        for path in (job.out, tokens, thumbnail):  # a video without its record is not reproducible
            path.unlink(missing_ok=True)
        raise
    return replace(files.result, video=job.out, tokens=tokens, sidecar=sidecar, thumbnail=thumbnail)


def none_or_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def release_actor(actor) -> None:
    with contextlib.suppress(Exception):  # the actor or the connection is gone: so are its models
        control(actor.release).remote()


class RayWorkers(threading.Thread):
    """Keeps one worker per unit of `resource` on every live node of the cluster: at start and whenever
    a node joins (or an actor of a live node was lost), it starts an actor there, waits until it is ready
    (torch loaded), and hands a JobWorker driving it to `add` (the pool's)."""

    def __init__(
        self,
        resource: str,
        model: str,
        ckpts: Path | None,
        run_options: dict[str, Any],
        new_worker: Callable[[Callable[[], RemotePipeline], str, str], JobWorker],
        pool: WorkerPool,
    ):
        """`resource`: GPU (one actor per GPU, num_gpus=1) or a custom resource name (one actor per unit);
        `new_worker(make_pipeline, label, device)` builds a JobWorker (not started) for `pool`."""
        super().__init__(name="landiff-ray-discovery", daemon=True)
        self.resource, self.new_worker, self.pool = resource, new_worker, pool
        self.host_args = (model, None if ckpts is None else str(ckpts), dict(run_options))
        self.workers: dict[str, list[JobWorker]] = {}  # node id -> the workers started there
        self.started: dict[str, int] = {}  # node id -> actors started there so far (labels stay unique)
        self.stopping = threading.Event()
        self.actor_class = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.actor_class = actor_class()
        while not self.stopping.is_set():
            try:
                self.survey()
            except Exception:  # the cluster's state could not be read: try again
                log.exception("reading the Ray cluster failed; retrying")
            self.stopping.wait(DISCOVERY_INTERVAL_S)

    def survey(self) -> None:
        import ray

        alive = {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}
        for node_id, node in alive.items():
            units = int(node.get("Resources", {}).get(self.resource, 0))
            working = [worker for worker in self.workers.get(node_id, []) if worker_usable(worker)]
            self.workers[node_id] = working
            for _ in range(units - len(working)):
                if self.stopping.is_set() or not self.start_worker(node_id, node):
                    return
        for node_id in [node_id for node_id in self.workers if node_id not in alive]:
            gone = self.workers.pop(node_id)
            if gone:
                log.warning("Ray node %s left the cluster with %d worker(s)", node_id[:8], len(gone))
            for worker in gone:
                self.retire(worker, f"its Ray node {node_id[:8]} left the cluster")

    def retire(self, worker: JobWorker, why: str) -> None:
        """An idle worker whose actor is gone claims no more jobs and leaves the pool. A busy one is left
        alone: its job's stream fails, and WorkerLost puts the job back in the queue."""
        with worker.lock:  # the lock a claim takes: no job becomes current while this looks
            if worker.current is not None:
                return
            worker.lost = why
        worker.notify()
        self.pool.remove(worker)

    def start_worker(self, node_id: str, node: dict[str, Any]) -> bool:
        """An actor on the node, then its worker in the pool; whether it started."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slot = self.started.get(node_id, 0)
        self.started[node_id] = slot + 1
        placement = {"num_gpus": 1} if self.resource == "GPU" else {"resources": {self.resource: 1}}
        actor = self.actor_class.options(
            **placement, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(*self.host_args)
        try:
            where = ray.get(control(actor.ready).remote(), timeout=ACTOR_READY_TIMEOUT_S)
        except Exception as error:  # timed out (its resource is taken by someone else), or it died
            log.warning("no actor started on Ray node %s: %s", node_id[:8], first_line(error))
            ray.kill(actor)
            return False
        if self.stopping.is_set():  # the engine stops: it takes no new worker
            ray.kill(actor)
            return False
        label = f"ray:{node_id[:8]}:{slot}"
        device = f"{where['ip']} {where['device']}"
        worker = self.new_worker(lambda: RemotePipeline(actor, label), label, device)
        self.workers.setdefault(node_id, []).append(worker)
        self.pool.add(worker)
        log.info("worker %s added: an actor on %s (Ray node %s)", label, device, node_id[:8])
        return True


def worker_usable(worker: JobWorker) -> bool:
    """Whether a worker still takes jobs (not lost, not stopped)."""
    return worker.lost is None and not worker.stopping.is_set() and worker.is_alive()
