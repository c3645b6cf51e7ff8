"""`landiff-engine serve`: puts the engine together and runs it until a signal or a shutdown request.

The parts: the store (engine/daemon/store.py), the event hub (events.py), the workers (pool.py: a
worker.py thread per device, devices.py), the weights desk (weights_ops.py), the request handlers
(service.py) and the socket (transport.py). Start-up imports no torch: the socket answers while the
worker threads load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import __version__, settings
from engine.daemon.backend import PipelineBackend, PipelineFactory
from engine.daemon.devices import AUTO, torch_device_name
from engine.daemon.events import EventHub
from engine.daemon.logs import configure_logging
from engine.daemon.pool import WorkerPool
from engine.daemon.quality_probe import start_quality_probe
from engine.daemon.service import EngineService
from engine.daemon.startup import (  # noqa: F401 (EngineAlreadyRunning: the CLI's name for it)
    EngineAlreadyRunning,
    StartRefused,
    check_socket_path,
    database_refusal,
    hold_engine_lock,
    writable_dir,
)
from engine.daemon.store import JOB_ID, Store
from engine.daemon.token_lane import TokenLane
from engine.daemon.transport import Transport, socket_answers
from engine.daemon.weights_ops import WeightsOperations
from engine.daemon.worker import JobWorker, remove_job_files, sweep_leftovers
from engine.paths import (
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


def pipeline_factory(
    model: str, ckpts: Path | None, run_options: dict[str, Any] | None = None, device: str | None = None
) -> Callable[[], Pipeline]:
    """`run_options`: plain values (memory, attention, compile, fuse_qkv), so the socket's side imports
    no torch; they become the pipeline's options in the worker thread. `device`: a torch device's name
    (None: the default device)."""
    options = dict(run_options or {})

    def make_pipeline() -> Pipeline:  # in the worker thread: torch and the models' code load there
        import torch

        from engine.generation.pipeline import Pipeline
        from engine.generation.speed import DiTOptions

        given = dict(options)
        memory = given.pop("memory", "auto")
        place = None if device is None else torch.device(device)
        with BUILDING:  # the tiny model's first pipeline writes its weights: one writer at a time
            return Pipeline.for_model(model, ckpts, device=place, memory=memory, dit=DiTOptions(**given))

    return make_pipeline


def threads_run_options(threads: int, run_options: dict[str, Any] | None) -> dict[str, Any]:
    """The run options of `threads` local workers: with more than one, torch.compile is off unless asked
    for (the CLI refuses that): it is not thread-safe (pytorch/pytorch#118260) and local workers are threads
    of one process."""
    options = dict(run_options or {})
    if threads > 1 and options.get("compile") is None:
        options["compile"] = False
        log.info("torch.compile is off: %d workers share this process and it is not thread-safe", threads)
    return options


def local_workers(
    labels: list[str],
    store: Store,
    model: str,
    ckpts: Path | None,
    publish,
    outputs: Path,
    idle_release_s: float,
    run_options: dict[str, Any] | None,
) -> list[JobWorker]:
    """A worker thread per device label (devices.parse_gpus), each with its own pipeline on its device."""
    options = threads_run_options(len(labels), run_options)
    workers = []
    for label in labels:
        device = torch_device_name(label)
        make_pipeline = pipeline_factory(model, ckpts, options, device)
        workers.append(JobWorker(store, make_pipeline, publish, outputs, idle_release_s, label, device))
    return workers


def group_workers(
    split: str,
    groups: list[list[str]],
    store: Store,
    model: str,
    ckpts: Path | None,
    publish,
    outputs: Path,
    idle_release_s: float,
    run_options: dict[str, Any] | None,
) -> list[JobWorker]:
    """`--parallel`: a worker per device group, labelled "cuda:0+cuda:1"; rank 0 runs in its thread, the
    other ranks in child processes its pipeline starts (engine/generation/parallel/ranks.py)."""
    workers = []
    for devices in groups:
        options = dict(run_options or {})

        def make_pipeline(  # in the worker thread, as the others
            devices: list[str] = devices, options: dict[str, Any] = options
        ) -> PipelineBackend:
            from engine.generation.parallel.plan import parse_parallel
            from engine.generation.parallel.ranks import parallel_pipeline
            from engine.generation.speed import DiTOptions

            given = dict(options)  # made again after each idle release: the options stay whole
            memory = given.pop("memory", "auto")
            folder = private_dir(runtime_dir())  # the rendezvous file: owner-only, no network
            return parallel_pipeline(
                model, ckpts, devices, parse_parallel(split), folder, memory, DiTOptions(**given)
            )

        label, device = "+".join(devices), torch_device_name(devices[0])
        workers.append(JobWorker(store, make_pipeline, publish, outputs, idle_release_s, label, device))
    return workers


async def run_engine(
    model: str,
    ckpts: Path | None,
    idle_release_s: float,
    run_options: dict[str, Any] | None = None,
    gpus: list[str] | None = None,
    ray: tuple[str, str] | None = None,
    parallel: tuple[str, list[list[str]]] | None = None,
    llm_device: str | None = None,
    command_options: list[str] | None = None,
) -> None:
    """`command_options`: serve's own command-line options but --model, which hello reports (a client
    restarting this engine starts one alike).
    `gpus`: the workers' device labels (devices.parse_gpus); None: one on the default device.
    `ray`: (address, resource): the workers are Ray actors, one per unit of the resource on each node.
    `parallel`: (split, device groups) of `--parallel`: a worker per group renders one video on it all.
    `llm_device`: the LLM lane's device (devices.parse_llm_device): stage 1 of every job runs there."""
    lock = hold_engine_lock(lock_path())  # before the socket: the one engine of this data dir binds it
    if ray is not None:  # joined before the socket: no cluster, no engine (one line)
        from engine.daemon import ray_workers

        ray_workers.connect(ray[0])
    path = socket_path()
    claim_socket_path(path)
    outputs = private_dir(writable_dir(outputs_dir(), "outputs folder", settings.DATA_DIR.name))
    try:
        store = Store(database_path())
        interrupted = store.interrupt_running()
    except Exception as error:  # read-only, locked, damaged or full: one line, not SQLite's traceback
        raise database_refusal(database_path(), error) from None
    if interrupted:
        log.warning("marked %d job(s) interrupted: %s", len(interrupted), ", ".join(interrupted))
        for job_id in filter(JOB_ID.fullmatch, interrupted):  # their half-made files (chunk previews...)
            remove_job_files(outputs / job_id)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    hub = EventHub(loop)
    sweep_leftovers(outputs)  # before any worker writes there
    workers, labels = [], []  # with Ray: the actors join the pool as the cluster's nodes offer the resource
    if ray is None and parallel is not None:
        split, groups = parallel
        workers = group_workers(
            split, groups, store, model, ckpts, hub.publish, outputs, idle_release_s, run_options
        )
        labels = [worker.label for worker in workers]
    elif ray is None:
        labels = gpus or [AUTO]
        publish = hub.publish
        workers = local_workers(labels, store, model, ckpts, publish, outputs, idle_release_s, run_options)
    lane = None
    if llm_device is not None:
        # its thread runs beside the workers' and torch.compile is not thread-safe: its step stays eager
        lane_options = {"memory": (run_options or {}).get("memory", "auto"), "compile": False}
        make_pipeline = pipeline_factory(model, ckpts, lane_options, llm_device)
        lane = TokenLane(store, make_pipeline, llm_device, outputs, idle_release_s, ahead=len(workers) + 1)
    pool = WorkerPool(store, workers, lane)
    pool.start()
    if ray is not None:

        def new_worker(make_pipeline: PipelineFactory, label: str, device: str) -> JobWorker:
            return JobWorker(store, make_pipeline, hub.publish, outputs, idle_release_s, label, device)

        cluster = ray_workers.RayWorkers(ray[1], model, ckpts, run_options or {}, new_worker, pool)
        cluster.start()
    weights = WeightsOperations(model, ckpts, hub.publish)
    service = EngineService(model, store, hub, pool, weights, stopped.set, outputs, log_path())
    service.command_options = command_options or []
    service.quality = start_quality_probe(model, ckpts, store, hub, lambda: pool.torch_ready)
    server = await Transport(service, hub).listen(path)
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
    async with server:
        await stopped.wait()
    log.info("stopping: waiting for the workers to leave their jobs")
    if ray is not None:
        cluster.stop()  # no worker joins from now on
    pool.stop()
    service.quality.stop()
    await asyncio.to_thread(pool.join, STOP_WAIT_S)
    # a daemon thread still inside torch when the interpreter finalises aborts the process (SIGABRT); the
    # probe leaves its video at the next frame it reads, so this wait is short
    await asyncio.to_thread(service.quality.join, STOP_WAIT_S)
    if ray is not None:
        ray_workers.disconnect()  # the engine's actors go with it
    service.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    log.info("engine stopped")
    os.close(lock)  # the last thing: a next engine may bind only once this one's socket is gone


def serve(
    model: str,
    ckpts: Path | None,
    idle_release_s: float,
    run_options: dict[str, Any] | None = None,
    gpus: list[str] | None = None,
    ray: tuple[str, str] | None = None,
    parallel: tuple[str, list[list[str]]] | None = None,
    llm_device: str | None = None,
    command_options: list[str] | None = None,
) -> None:
    writable_dir(data_dir(), "data dir", settings.DATA_DIR.name)  # the log lives there
    configure_logging()
    try:
        asyncio.run(
            run_engine(
                model, ckpts, idle_release_s, run_options, gpus, ray, parallel, llm_device, command_options
            )
        )
    except StartRefused:  # its one line is the command's to print (to engine.out when detached)
        raise
    except Exception:
        log.exception("the engine stopped on an error")
        raise
