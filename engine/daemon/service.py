"""The engine's request handlers. They know no sockets: each takes a request model and returns its reply
model (`reply_type` of the request's), or raises RequestFailed with a code and a message that says what to
do.

Store calls run on the store thread, never on the event loop. An event is published after the store
write it describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import shutil
import time
import typing
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from engine import __version__
from engine.daemon import logs
from engine.daemon.device import device_status
from engine.daemon.disk import is_disk_full
from engine.daemon.events import EventHub
from engine.daemon.store import ForeignJobId, Store, job_folder
from engine.daemon.store_thread import StoreThread
from engine.daemon.weights_ops import NothingRunning, WeightsBusy, WeightsOperations
from engine.protocol import (
    PROTOCOL_VERSION,
    REQUEST_MODELS,
    Cancel,
    CancelDownload,
    CancelDownloadReply,
    CancelReply,
    ChunkFinishedEvent,
    DeleteJob,
    DeletePreset,
    DownloadWeights,
    EmptyReply,
    Event,
    Exact,
    GetJob,
    Hello,
    HelloReply,
    JobCancelledEvent,
    JobDeletedEvent,
    JobIdReply,
    JobList,
    JobParams,
    JobProgressEvent,
    JobQueuedEvent,
    JobReply,
    JobSummary,
    LaneState,
    LengthLimits,
    LengthRecord,
    ListJobs,
    ListPresets,
    LogTail,
    LogTailReply,
    MoveJob,
    PauseQueue,
    Preset,
    PresetList,
    PresetNameReply,
    ProbeQuality,
    QueueChangedEvent,
    QueueReply,
    ReleaseModels,
    Request,
    SavePreset,
    Shutdown,
    ShutdownReply,
    Status,
    StatusReply,
    Submit,
    SubmitReply,
    Subscribe,
    SubscribeReply,
    VerifyWeights,
    WeightsJobReply,
    WeightsPart,
    WeightsStatus,
    WeightsStatusReply,
    WorkerState,
    parse_event,
    reply_type,
    type_name,
)

if TYPE_CHECKING:
    from engine.daemon.pool import WorkerPool
    from engine.daemon.quality_probe import QualityProbe
    from engine.daemon.store import JobRow

log = logging.getLogger(__name__)
E = TypeVar("E", bound=Event)
ACTIVE_LIMIT = 100  # queued jobs a subscriber's snapshot lists at most (list_jobs status=queued pages on)
# the most a page of jobs or a snapshot holds, in JSON bytes: far below what a client reads
# (wire.MAX_REPLY_BYTES), and what a client that asks and does not read holds of the engine's memory (the
# transport reads its next request only once it has read this one): ~120 long jobs
REPLY_BUDGET = 2**20
# pages of jobs made at once (each in the store's thread): more wait their turn, and the small requests
# of other clients (status) pass them instead of waiting behind a crowd of pages
PAGES_AT_ONCE = 2


class RequestFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# (service, request) -> the reply model of the request's type, which `handlers` checks each one returns
Handler = Callable[[Any, Any], Awaitable[Exact]]


def handlers(service: type) -> dict[type[Request[Any]], Handler]:
    """The service's handler of each request model: its `on_` method whose `request` parameter is
    annotated with that model, and whose return is annotated with exactly the model's reply model.
    TypeError unless every model of the protocol has exactly one."""
    found: dict[type[Request[Any]], Handler] = {}
    for name, method in inspect.getmembers(service, inspect.iscoroutinefunction):
        if not name.startswith("on_"):
            continue
        hints = typing.get_type_hints(method)
        request_type = hints.get("request")
        if request_type not in REQUEST_MODELS:
            raise TypeError(f"{service.__name__}.{name} does not take a request model as `request`")
        if request_type in found:
            raise TypeError(f"{service.__name__}.{name}: a second handler of {request_type.__name__}")
        reply = reply_type(request_type)
        if hints.get("return") is not reply:
            returned = hints.get("return", "nothing")
            raise TypeError(
                f"{service.__name__}.{name} must be annotated to return {reply.__name__}, the reply model of "
                f"{request_type.__name__}, not {getattr(returned, '__name__', returned)}"
            )
        found[request_type] = method
    missing = [model.__name__ for model in REQUEST_MODELS if model not in found]
    if missing:
        raise TypeError(f"{service.__name__} handles no {', '.join(missing)}")
    return found


class EngineService:
    def __init__(
        self,
        model: str,
        store: Store,
        hub: EventHub,
        workers: WorkerPool,
        weights: WeightsOperations,
        stop: Callable[[], None],
        outputs: Path,
        log_file: Path,
    ):
        self.handlers = handlers(type(self))  # first: a service with a wrong handler is refused at once
        self.model, self.store, self.hub, self.workers, self.weights = model, store, hub, workers, weights
        self.stop, self.outputs, self.log_file = stop, outputs, log_file
        self.command_options: list[str] = []  # serve's options but --model: hello reports them
        self.db = StoreThread()
        self.pages = asyncio.Semaphore(PAGES_AT_ONCE)
        self.quality: QualityProbe | None = None  # the server's quality probe thread
        self.started = time.time()
        self.instance = f"{os.getpid()}-{int(self.started)}"

    async def handle(self, request: Request[Any]) -> Exact:
        handler = self.handlers[type(request)]
        try:
            return await handler(self, request)
        except RequestFailed:
            raise
        except Exception as error:
            if is_disk_full(error):
                folder = self.store.path.parent
                log.error("the %s request failed: the disk of %s is full", type_name(type(request)), folder)
                raise RequestFailed(
                    "disk_full",
                    f"the disk holding the data dir {folder} is full; free some space there and try again",
                ) from None
            raise

    def close(self) -> None:
        self.db.close()

    async def job(self, job_id: str) -> JobRow:
        row = await self.db.run(self.store.get, await self.resolve(job_id))
        if row is None:
            raise RequestFailed("not_found", f"no job {job_id!r}")
        return row

    async def resolve(self, given: str) -> str:
        """A job's id from its id or a unique prefix of it (at least 4 characters; the TUI shows 8)."""
        if await self.db.run(self.store.get, given) is not None:
            return given
        if len(given) < 4:
            raise RequestFailed(
                "not_found", f"no job {given!r}: give its id, or at least its first 4 characters"
            )
        matches = await self.db.run(self.store.ids_starting, given)
        if not matches:
            raise RequestFailed("not_found", f"no job {given!r}")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
            raise RequestFailed(
                "ambiguous", f"{given!r} is the start of several jobs ({shown}): give more of the id"
            )
        return matches[0]

    def limits(self) -> LengthLimits:
        from engine.generation.lengths import limits, rules_for

        return LengthLimits.model_validate(limits(rules_for(self.model)))

    def latest(self, model: type[E], job_id: str | None) -> E | None:
        """The newest event of `model`'s kind about `job_id` still in the hub's backlog."""
        message = self.hub.latest(type_name(model, "event"), job_id) if job_id else None
        return None if message is None else model.model_validate(message)

    def worker_state(self, view: dict[str, Any]) -> WorkerState:
        """A worker's view with where its running job stands, so a view opened mid-job draws it at once."""
        state = WorkerState.model_validate(view)
        return state.model_copy(
            update={
                "progress": self.latest(JobProgressEvent, state.job_id),
                "last_chunk": self.latest(ChunkFinishedEvent, state.job_id),
            }
        )

    # the engine

    async def on_hello(self, request: Hello) -> HelloReply:
        if request.model is not None and request.model != self.model:
            raise RequestFailed(
                "wrong_model",
                f"this engine serves the {self.model!r} model, not {request.model!r}; "
                "stop it (landiff-engine stop) to start one with another model",
            )
        return HelloReply(
            protocol=PROTOCOL_VERSION,
            engine_version=__version__,
            model=self.model,
            random_weights=self.weights.spec().random_weights,
            instance=self.instance,
            pid=os.getpid(),
            seq=self.hub.seq,
            limits=self.limits(),
            options=self.command_options,
        )

    async def on_status(self, request: Status) -> StatusReply:
        workers = [self.worker_state(view) for view in self.workers.view()]
        running = next((worker for worker in workers if worker.job_id), None)
        lane = self.workers.lane_view()
        return StatusReply(
            model=self.model,
            engine_version=__version__,
            pid=os.getpid(),
            uptime_s=round(time.time() - self.started, 1),
            running=running.job_id if running else None,
            progress=running.progress if running else None,
            last_chunk=running.last_chunk if running else None,
            workers=workers,
            llm_lane=None if lane is None else LaneState.model_validate(lane),
            no_worker=None if workers else self.workers.no_worker,
            queue=await self.db.run(self.store.queued_ids),
            queue_paused=await self.db.run(self.store.queue_paused),
            models_loaded=self.workers.loaded_models(),
            downloading=self.weights.busy(),
            seq=self.hub.seq,
            limits=self.limits(),
            options=self.command_options,
            **device_status(self.workers.torch_ready),
        )

    async def on_subscribe(self, request: Subscribe) -> SubscribeReply:
        # The snapshot's seq and missed events are taken before any await: the transport subscribed this
        # connection just before, so every later event reaches it. `active` is read after, so it may
        # already show what an event after `seq` says; a client applies both (they agree).
        seq = self.hub.seq
        missed, gap = self.hub.since(request.since)
        if json_size(missed) > REPLY_BUDGET:  # more than a reply holds: the client reloads, as after a gap
            missed, gap = [], True

        def active_jobs() -> list[JobSummary]:
            running = self.store.list_jobs(status="running")[0]
            queued = self.store.list_jobs(status="queued", sort="queue", limit=ACTIVE_LIMIT)[0]
            return within_budget([summary(row) for row in running + queued])

        active = await self.db.run(active_jobs)
        events = [parse_event(message) for message in missed]  # the hub's backlog holds them as sent
        return SubscribeReply(seq=seq, instance=self.instance, missed=events, gap=gap, active=active)

    async def on_log_tail(self, request: LogTail) -> LogTailReply:
        lines = await asyncio.to_thread(logs.tail, self.log_file, request.lines)
        return LogTailReply(path=str(self.log_file), lines=lines)

    async def on_release_models(self, request: ReleaseModels) -> EmptyReply:
        self.workers.request_release()
        return EmptyReply()

    async def on_shutdown(self, request: Shutdown) -> ShutdownReply:
        log.info("shutdown requested by a client")
        asyncio.get_running_loop().call_later(0.05, self.stop)  # after this reply has gone out
        return ShutdownReply(stopping=True)

    # jobs

    async def on_submit(self, request: Submit) -> SubmitReply:
        from engine.generation.lengths import plan_length, rules_for

        params = request.params
        try:  # a length the model cannot make is refused now, not when the job starts
            plan = plan_length(rules_for(self.model), params.frames, params.overlap)
        except ValueError as error:
            raise RequestFailed("invalid", str(error)) from None
        await self.check_weights()
        await self.check_prompt(params.prompt)

        def add_and_announce():
            # under the store's lock, which the worker's claim takes too: job_queued is published
            # before the worker can claim the job and publish job_started
            with self.store.lock:
                row = self.store.add_job(params.model_dump(), self.model, __version__, request.group)
                self.hub.publish(JobQueuedEvent(job_id=row.id, prompt=row.prompt))
            return row

        row = await self.db.run(add_and_announce)
        log.info(
            "job %s queued: %d frames in %d chunk(s), %d steps, seed %d: %r",
            row.id,
            plan.frames,
            plan.chunks,
            params.steps,
            params.seed,
            shorten(params.prompt),
        )
        self.workers.notify()
        return SubmitReply(job_id=row.id, length=LengthRecord.model_validate(plan.record()))

    async def check_weights(self) -> None:
        """A job this engine's weights cannot run is refused now ("no_weights"), naming what is missing and
        the two ways out, not accepted to fail seconds later at load ("T5 config not found"). The check
        is `weights_status`'s (a stat of each needed file, the small verification record and flan-T5's
        index): no weights file is read. The tiny model's random weights are made at load when absent, so
        they never refuse."""
        if self.weights.spec().random_weights:
            return
        status = await asyncio.to_thread(self.weights.status, "all")
        if status.complete:
            return
        needed = [file for file in status.files if not file.optional]
        lacking = [file for file in needed if file.state not in ("verified", "present")]
        if self.weights.busy():
            raise RequestFailed(
                "no_weights",
                f"the {self.model} model's weights are still downloading into {status.root} "
                f"({len(lacking)} of {len(needed)} file(s) to go): submit again once "
                "`landiff-engine weights status` says they are complete, or use `--model tiny` (the tiny "
                "test model, random weights made here) meanwhile",
            )
        counts: dict[str, int] = {}
        for file in lacking:
            counts[file.state] = counts.get(file.state, 0) + 1
        words = {"missing": "missing", "partial": "partly downloaded", "corrupt": "damaged"}
        said = ", ".join(f"{count} {words.get(state, state)}" for state, count in counts.items())
        names = ", ".join(file.local for file in lacking[:3]) + (", ..." if len(lacking) > 3 else "")
        raise RequestFailed(
            "no_weights",
            f"the {self.model} model's weights are not here: of its {len(needed)} file(s) under "
            f"{status.root}, {said} ({names}). `landiff-engine weights download` fetches them, or "
            "`--model tiny` runs the tiny test model instead (random weights, made here)",
        )

    async def check_prompt(self, prompt: str) -> None:
        """A prompt longer than the language model reads is refused now (never cut when the job runs)."""
        from engine.errors import CheckpointError
        from engine.generation.prompt_tokens import check_prompt_fits
        from engine.specs import get_spec
        from engine.weights.layout import layout_for

        folder = layout_for(self.model, self.weights.ckpts).flan_t5_dir
        try:
            await asyncio.to_thread(check_prompt_fits, prompt, get_spec(self.model), folder)
        except ValueError as error:
            raise RequestFailed("invalid", str(error)) from None
        except CheckpointError:
            pass  # no tokenizer yet: the job itself fails at load, naming the file to download

    async def on_cancel(self, request: Cancel) -> CancelReply:
        job_id = await self.resolve(request.job_id)
        outcome = await self.db.run(self.workers.cancel, job_id)
        if outcome == "cancelled":
            with contextlib.suppress(ForeignJobId):  # a queued job's folder: a checkpoint to resume from
                await asyncio.to_thread(shutil.rmtree, job_folder(self.outputs, job_id), ignore_errors=True)
            self.hub.publish(JobCancelledEvent(job_id=job_id))
            log.info("job %s cancelled while queued", job_id)
            return CancelReply(job_id=job_id, status="cancelled")
        if outcome == "cancelling":
            log.info("job %s cancel requested while running", job_id)
            return CancelReply(job_id=job_id, status="cancelling")
        row = await self.job(job_id)
        if row.status == "running":  # its worker has finished it and is writing its end
            raise RequestFailed("too_late", f"job {row.id} has just finished: too late to cancel")
        raise RequestFailed(
            "not_cancellable", f"job {row.id} is {row.status}; only queued or running jobs cancel"
        )

    async def on_list_jobs(self, request: ListJobs) -> JobList:
        def page() -> JobList:
            rows, total = self.store.list_jobs(
                request.search, request.status, request.sort, request.offset, request.limit
            )
            # a page stops short of `limit` rather than pass the budget: the next starts at offset + len(jobs)
            return JobList(jobs=within_budget(summary(row) for row in rows), total=total)

        async with self.pages:
            return await self.db.run(page)

    async def on_get_job(self, request: GetJob) -> JobReply:
        return JobReply(job=summary(await self.job(request.job_id)))

    async def on_delete_job(self, request: DeleteJob) -> JobIdReply:
        row = await self.job(request.job_id)
        if row.status in ("queued", "running"):
            raise RequestFailed("busy", f"job {row.id} is {row.status}; cancel it before deleting")
        folder = None
        if request.delete_files:
            try:
                folder = job_folder(self.outputs, row.id)
            except ForeignJobId:
                raise RequestFailed(
                    "invalid", f"job id {row.id!r} is not one this engine makes; its files stay"
                ) from None
        await self.db.run(self.store.delete, row.id)
        if folder is not None:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
        self.hub.publish(JobDeletedEvent(job_id=row.id))
        log.info("job %s deleted%s", row.id, " with its files" if request.delete_files else "")
        return JobIdReply(job_id=row.id)

    # the queue

    async def queue_state(self) -> QueueReply:
        def read() -> QueueReply:
            return QueueReply(queue=self.store.queued_ids(), paused=self.store.queue_paused())

        return await self.db.run(read)

    async def on_move_job(self, request: MoveJob) -> QueueReply:
        job_id = await self.resolve(request.job_id)
        if not await self.db.run(self.store.move_queued, job_id, request.to):
            row = await self.job(job_id)
            raise RequestFailed("not_queued", f"job {row.id} is {row.status}; only queued jobs move")
        state = await self.queue_state()
        self.hub.publish(QueueChangedEvent(queue=state.queue, paused=state.paused))
        log.info("job %s moved to place %d of the queue", job_id, state.queue.index(job_id) + 1)
        self.workers.notify()  # a lane making tokens ahead follows the new order
        return state

    async def on_pause_queue(self, request: PauseQueue) -> QueueReply:
        await self.db.run(self.store.pause_queue, request.paused)
        state = await self.queue_state()
        self.hub.publish(QueueChangedEvent(queue=state.queue, paused=state.paused))
        log.info("queue %s", "paused: no new job starts" if request.paused else "resumed")
        self.workers.notify()
        return state

    # presets

    async def on_list_presets(self, request: ListPresets) -> PresetList:
        presets = await self.db.run(self.store.presets)
        return PresetList(presets={name: Preset.model_validate(preset) for name, preset in presets.items()})

    async def on_save_preset(self, request: SavePreset) -> PresetNameReply:
        unknown = set(request.params) - set(JobParams.model_fields)
        if "prompt" in request.params or unknown:
            bad = sorted(unknown | ({"prompt"} & set(request.params)))
            raise RequestFailed(
                "invalid", f"a preset holds job parameters other than the prompt; not: {', '.join(bad)}"
            )
        try:
            JobParams(prompt="x", **request.params)
        except ValueError as error:
            raise RequestFailed("invalid", f"preset parameters are out of range: {error}") from None
        try:
            await self.db.run(self.store.save_preset, request.name, request.params)
        except ValueError as error:
            raise RequestFailed("builtin", str(error)) from None
        return PresetNameReply(name=request.name)

    async def on_delete_preset(self, request: DeletePreset) -> PresetNameReply:
        try:
            found = await self.db.run(self.store.delete_preset, request.name)
        except ValueError as error:
            raise RequestFailed("builtin", str(error)) from None
        if not found:
            raise RequestFailed("not_found", f"no preset named {request.name!r}")
        return PresetNameReply(name=request.name)

    # weights

    async def on_weights_status(self, request: WeightsStatus) -> WeightsStatusReply:
        return await asyncio.to_thread(self.weights.status, request.only)

    async def on_download_weights(self, request: DownloadWeights) -> WeightsJobReply:
        return self.start_weights("download", request.only, request.clip, request.source)

    async def on_verify_weights(self, request: VerifyWeights) -> WeightsJobReply:
        return self.start_weights("verify", request.only)

    def start_weights(
        self, kind: str, only: WeightsPart, clip: bool = False, source: str = "huggingface"
    ) -> WeightsJobReply:
        try:
            return self.weights.start(kind, only, clip, source)
        except WeightsBusy as error:
            raise RequestFailed("busy", str(error)) from None

    async def on_probe_quality(self, request: ProbeQuality) -> JobIdReply:
        from engine.daemon.quality_probe import PROBED_STATUSES

        row = await self.job(request.job_id)
        if row.status not in PROBED_STATUSES or not row.video_path:
            raise RequestFailed(
                "invalid",
                f"job {row.id} is {row.status} and has no video to measure; the quality probe measures "
                "finished jobs and the kept chunks of cancelled ones",
            )
        if self.quality is None:
            raise RequestFailed("unavailable", "this engine runs no quality probe")
        self.quality.request(row.id)
        log.info("job %s quality probe requested", row.id)
        return JobIdReply(job_id=row.id)

    async def on_cancel_download(self, request: CancelDownload) -> CancelDownloadReply:
        try:
            self.weights.cancel()
        except NothingRunning as error:
            raise RequestFailed("not_running", str(error)) from None
        return CancelDownloadReply(cancelling=True)


def summary(row: JobRow) -> JobSummary:
    return JobSummary.model_validate(row.summary())


def json_size(items: list[Any]) -> int:
    """`items`' size in a reply: JSON as the wire writes it (engine.wire.encode_line: non-ASCII escaped)."""
    return sum(len(json.dumps(json_data(item), separators=(",", ":"))) + 1 for item in items)


def json_data(item: Any) -> Any:
    return item.model_dump(mode="json") if isinstance(item, BaseModel) else item


M = TypeVar("M", bound=BaseModel | dict[str, Any])


def within_budget(items: Iterable[M], budget: int | None = None) -> list[M]:
    """The first of `items` whose JSON fits in `budget` bytes (REPLY_BUDGET; always the first one). Taken
    one at a time: a generator's items past the budget are never made."""
    budget = REPLY_BUDGET if budget is None else budget
    kept: list[M] = []
    used = 0
    for item in items:
        used += json_size([item])
        if kept and used > budget:
            break
        kept.append(item)
    return kept


def shorten(prompt: str, limit: int = 60) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
