"""`landiff-engine serve`: puts the engine together and runs it until a signal or a shutdown request.

The parts: the store (engine/daemon/store.py), the event hub (events.py), the workers (pool.py: a
worker.py thread per device, devices.py), the weights desk (weights_ops.py), the request handlers
(service.py) and the socket (transport.py). Start-up imports no torch: the socket answers while the
worker threads load it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import __version__, settings
from engine.daemon.backend import PipelineBackend, PipelineFactory
from engine.daemon.config import EngineConfig, ParallelGroups, RunOptions
from engine.daemon.devices import AUTO, torch_device_name
from engine.daemon.events import EventHub, Publisher
from engine.daemon.logs import configure_logging
from engine.daemon.on_finish import OnFinish
from engine.daemon.pool import WorkerPool
from engine.daemon.quality_probe import start_quality_probe
from engine.daemon.service import EngineService
from engine.daemon.socket_watch import SocketWatch
from engine.daemon.startup import (  # noqa: F401 (EngineAlreadyRunning: the CLI's name for it)
    EngineAlreadyRunning,
    StartRefused,
    check_socket_path,
    database_refusal,
    hold_engine_lock,
    writable_dir,
)
from engine.daemon.store import JOB_ID, Store, job_folder
from engine.daemon.token_lane import TokenLane
from engine.daemon.transport import Transport, socket_answers
from engine.daemon.weights_ops import WeightsOperations
from engine.daemon.worker import JobWorker, recover_running, remove_job_files, sweep_leftovers
from engine.paths import (
    RENDEZVOUS,
    data_dir,
    database_path,
    lock_path,
    log_path,
    outputs_dir,
    private_dir,
    runtime_dir,
    socket_path,
)
from engine.wire import STOP_WAIT_S

if TYPE_CHECKING:
    from engine.generation.pipeline import Pipeline

log = logging.getLogger(__name__)
BUILDING = threading.Lock()  # held while a worker makes its pipeline (cheap: the models load with a job)


def claim_socket_path(path: Path) -> None:
    """Make the socket's place ready: refuse when a live engine answers there, remove a dead one's socket."""
    check_socket_path(path)
    private_dir(writable_dir(path.parent, "runtime dir", settings.RUNTIME_DIR.name))
    if path.exists() or path.is_symlink():
        if socket_answers(path):
            raise EngineAlreadyRunning(
                f"an engine is already running on {path} (`landiff-engine status` shows it)"
            )
        path.unlink()


def sweep_rendezvous(runtime: Path) -> None:
    """Parallel groups' rendezvous files an engine killed mid-job left (kill -9 runs no clean-up)."""
    for stale in runtime.glob(RENDEZVOUS):
        log.info("removing %s, left by an engine that stopped without cleaning up", stale)
        stale.unlink(missing_ok=True)


def pipeline_factory(
    model: str, ckpts: Path | None, options: RunOptions, device: str | None = None
) -> Callable[[], Pipeline]:
    """A local pipeline's maker, called in the worker's thread (torch and the models' code load there).
    `device`: a torch device's name (None: the default device)."""

    def make_pipeline() -> Pipeline:
        import torch

        from engine.generation.pipeline import Pipeline

        place = None if device is None else torch.device(device)
        with BUILDING:  # the tiny model's first pipeline writes its weights: one writer at a time
            return Pipeline.for_model(model, ckpts, device=place, memory=options.memory, dit=options.dit())

    return make_pipeline


def threads_run_options(threads: int, options: RunOptions) -> RunOptions:
    """The run options of `threads` local workers: with more than one, torch.compile is off unless asked
    for (the CLI refuses that): local workers are threads of one process."""
    if threads > 1 and options.compile is None:
        log.info("torch.compile is off: %d workers share this process and it is not thread-safe", threads)
        return options.without_compile()
    return options


class Workers:
    """What the engine's workers are built with besides their pipeline: one per backend below."""

    def __init__(self, config: EngineConfig, store: Store, publish: Publisher, outputs: Path):
        self.config, self.store, self.publish, self.outputs = config, store, publish, outputs

    def worker(self, make_pipeline: PipelineFactory, label: str, device: str | None) -> JobWorker:
        idle = self.config.idle_release_s
        return JobWorker(self.store, make_pipeline, self.publish, self.outputs, idle, label, device)

    def local(self) -> list[JobWorker]:
        """A worker thread per device label (devices.parse_gpus), each with its own pipeline on its device."""
        config = self.config
        labels = list(config.gpus or [AUTO])
        options = threads_run_options(len(labels), config.run)
        return [
            self.worker(pipeline_factory(config.model, config.ckpts, options, device), label, device)
            for label, device in ((label, torch_device_name(label)) for label in labels)
        ]

    def groups(self, parallel: ParallelGroups) -> list[JobWorker]:
        """`--parallel`: a worker per device group, labelled "cuda:0+cuda:1"; rank 0 runs in its thread,
        the other ranks in child processes its pipeline starts (engine/generation/parallel/ranks.py)."""
        config = self.config

        def factory(devices: list[str]) -> PipelineFactory:
            def make_pipeline() -> PipelineBackend:  # in the worker thread, as the others
                from engine.generation.parallel.plan import parse_parallel
                from engine.generation.parallel.ranks import parallel_pipeline

                folder = private_dir(runtime_dir())  # the rendezvous file: owner-only, no network
                options = config.run
                plan = parse_parallel(parallel.split)
                return parallel_pipeline(
                    config.model, config.ckpts, devices, plan, folder, options.memory, options.dit()
                )

            return make_pipeline

        return [
            self.worker(factory(list(devices)), "+".join(devices), torch_device_name(devices[0]))
            for devices in parallel.groups
        ]


def start_workers(config: EngineConfig, store: Store, hub: EventHub, outputs: Path) -> tuple[WorkerPool, Any]:
    """The one place the engine's backend is picked from its configuration: Ray actors, parallel groups or
    local threads, each worker's pipeline a PipelineBackend; with --llm-device, the LLM lane beside them.
    Returns the started pool, and the Ray cluster's watcher (None without Ray)."""
    made = Workers(config, store, hub.publish, outputs)
    workers: list[JobWorker] = []  # with Ray: the actors join the pool as the cluster's nodes offer them
    if config.ray is None:
        workers = made.local() if config.parallel is None else made.groups(config.parallel)
    lane = None
    if config.llm_device is not None:
        # its thread runs beside the workers' and torch.compile is not thread-safe: its step stays eager
        lane_options = RunOptions(memory=config.run.memory, compile=False)
        make_pipeline = pipeline_factory(config.model, config.ckpts, lane_options, config.llm_device)
        lane = TokenLane(
            store, make_pipeline, config.llm_device, outputs, config.idle_release_s, ahead=len(workers) + 1
        )
    pool = WorkerPool(store, workers, lane)
    pool.start()
    cluster = None
    if config.ray is not None:
        from engine.daemon import ray_workers

        cluster = ray_workers.RayWorkers(
            config.ray.resource, config.model, config.ckpts, config.run, made.worker, pool
        )
        cluster.start()
    return pool, cluster


async def run_engine(config: EngineConfig) -> None:
    model, ckpts = config.model, config.ckpts
    lock = hold_engine_lock(lock_path())  # before the socket: the one engine of this data dir binds it
    if config.ray is not None:  # joined before the socket: no cluster, no engine (one line)
        from engine.daemon import ray_workers

        ray_workers.connect(config.ray.address)
    path = socket_path()
    claim_socket_path(path)
    sweep_rendezvous(path.parent)  # this engine alone serves from this runtime dir now
    outputs = private_dir(writable_dir(outputs_dir(), "outputs folder", settings.DATA_DIR.name))
    try:
        store = Store(database_path())
        interrupted = recover_running(store, outputs)  # those with a resume checkpoint go back to the queue
    except Exception as error:  # read-only, locked, damaged or full: one line, not SQLite's traceback
        raise database_refusal(database_path(), error) from None
    if interrupted:
        log.warning("marked %d job(s) interrupted: %s", len(interrupted), ", ".join(interrupted))
        for job_id in filter(JOB_ID.fullmatch, interrupted):  # their half-made files (chunk previews...)
            remove_job_files(job_folder(outputs, job_id))
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    hub = EventHub(loop)
    sweep_leftovers(outputs)  # before any worker writes there
    pool, cluster = start_workers(config, store, hub, outputs)
    labels, lane = [worker.label for worker in pool.workers], pool.lane
    weights = WeightsOperations(model, ckpts, hub.publish)
    service = EngineService(model, store, hub, pool, weights, stopped.set, outputs, log_path())
    service.command_options = list(config.command_options)
    service.quality = start_quality_probe(model, ckpts, store, hub, lambda: pool.torch_ready)
    on_finish = None
    if config.on_finish:
        on_finish = OnFinish(config.on_finish, store)
        on_finish.start()
        hub.listeners.append(on_finish.notice)
    transport = Transport(service, hub)
    watch = SocketWatch(path, transport.listen, stopped.set)  # a removed socket is bound again
    await watch.listen()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    log.info(
        "landiff-engine %s (%s model) listening on %s; %d worker(s): %s%s",
        __version__,
        model,
        path,
        len(labels),
        ", ".join(labels),
        "" if lane is None else f"; stage 1 on the LLM lane's {lane.label}",
    )
    print(f"ready {path}", flush=True)
    try:
        await stopped.wait()
    finally:
        watch.close()  # no new client from now on
    log.info("stopping: waiting for the workers to leave their jobs")
    if cluster is not None:
        cluster.stop()  # no worker joins from now on
    pool.stop()
    service.quality.stop()
    await asyncio.to_thread(pool.join, STOP_WAIT_S)
    # a daemon thread still inside torch when the interpreter finalises aborts the process (SIGABRT); the
    # probe leaves its video at the next frame it reads, so this wait is short
    await asyncio.to_thread(service.quality.join, STOP_WAIT_S)
    if service.quality.is_alive():
        log.warning("the quality probe did not stop within %.0f s: the engine stops without it", STOP_WAIT_S)
    if on_finish is not None:  # the hooks of the jobs that ended as the workers left
        on_finish.stop()
        await asyncio.to_thread(on_finish.join, STOP_WAIT_S)
    if cluster is not None:
        from engine.daemon import ray_workers

        cluster.tidy()  # the actors' scratch folders go first
        ray_workers.disconnect()  # the engine's actors go with it
    service.close()
    watch.remove()  # only while the path is still this engine's socket
    log.info("engine stopped")
    os.close(lock)  # the last thing: a next engine may bind only once this one's socket is gone


def serve(config: EngineConfig) -> None:
    writable_dir(data_dir(), "data dir", settings.DATA_DIR.name)  # the log lives there
    configure_logging()
    try:
        asyncio.run(run_engine(config))
    except StartRefused:  # its one line is the command's to print (to engine.out when detached)
        raise
    except Exception:
        log.exception("the engine stopped on an error")
        raise
