"""The engine's wire format: one JSON object per line over a Unix socket.

A request is `{"v": 1, "id": ..., "type": ..., ...}`; its reply echoes the id with either
`{"ok": true, "result": {...}}` or `{"ok": false, "error": {"code": ..., "message": ...}}`.
Events are `{"v": 1, "event": ..., "seq": n, ...}` with a per-engine sequence number, pushed to
subscribed connections. This module imports no torch: clients use it as it is.

Every request, reply and event is a model here: requests in `AnyRequest` (keyed on `type`), each
request type's reply model in `REPLIES`, events in `AnyEvent` (keyed on `event`). The engine checks
what it sends at two choke points, `encode_reply` and `event`; clients parse with `parse_reply` and
`parse_event`. Framing and the remote-error type live in `engine.wire` (no pydantic, for fast starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    create_model,
)

from engine.params import PARAMS, Param
from engine.wire import JOB_STATUSES as JOB_STATUSES  # the constants are re-exported
from engine.wire import MAX_LINE_BYTES as MAX_LINE_BYTES
from engine.wire import MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from engine.wire import MAX_REPLY_BYTES as MAX_REPLY_BYTES
from engine.wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from engine.wire import (
    FramingError,
    RemoteError,
    decode_line,
    encode_line,
)


class Strict(BaseModel):
    """What a client sends: no unknown field, and no value of another type taken for one ("24" for 24,
    true for 1, 3.0 for an integer); an integer is a number where a float is meant, as JSON writes it."""

    model_config = ConfigDict(extra="forbid", strict=True)


def type_name(model: type[BaseModel], tag: str = "type") -> str:
    """The literal a model's tag field holds: a request's `type`, an event's `event`."""
    literal: str = get_args(model.model_fields[tag].annotation)[0]
    return literal


WeightsPart = Literal["llm", "diffusion", "all"]
WeightsSource = Literal["huggingface", "modelscope"]  # engine.weights.layout.SOURCES
JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]


def job_params_model(params: Sequence[Param] | None = None) -> type[Strict]:
    """The wire model of a job's parameters, one field per schema parameter (`engine.params`), each checked
    and normalised by the schema's own code: the same ranges the CLI, the TUI and the pipeline apply."""
    fields: dict[str, Any] = {}
    for param in PARAMS if params is None else params:
        kind = param.kind | None if param.optional else param.kind
        default = ... if param.required else param.default
        fields[param.name] = (Annotated[kind, AfterValidator(param.check)], default)
    return create_model("JobParams", __base__=Strict, __module__=__name__, **fields)


if TYPE_CHECKING:

    class JobParams(Strict):
        """What mypy sees of the model `job_params_model` builds: the fields the engine reads by name."""

        prompt: str
        seed: int
        steps: int
        frames: int | None
        overlap: int | None
        fps: int

else:
    JobParams = job_params_model()


# What the engine sends: replies, events and their parts. No unknown fields and no coercion: a string
# where a number belongs is the engine's bug, found where it is made rather than in a client.


class Exact(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


R = TypeVar("R", bound=Exact)  # a reply model


Stage = Literal["text", "tokens", "denoise", "decode", "write"]
FileState = Literal["present", "verified", "missing", "partial", "corrupt"]


class LengthLimits(Exact):
    """What a length field shows (generation.lengths.limits): one clip, each further chunk, the most."""

    fps: int
    overlap: int
    clip_frames: int
    chunk_frames: int
    max_frames: int
    max_seconds: float
    max_chunks: int


class LengthRecord(Exact):
    """How a submitted length was planned (generation.lengths.ChunkPlan.record)."""

    requested_frames: int | None
    frames: int
    seconds: float
    chunks: int
    overlap: int
    window: int
    segments: int
    rounded: str | None  # what the rounding did, in words; None when nothing was rounded


def rounded(digits: int) -> AfterValidator:
    """A reported float kept to `digits` decimals, as its model is made: the one place such a number is
    rounded, whoever makes the model (the pipeline, the store reading a row, a client reading the wire)."""
    return AfterValidator(lambda value: None if value is None else round(value, digits))


StageSeconds = Annotated[float, rounded(4)]
STAGE_SECONDS = ("denoise_s", "decode_s", "write_s")  # a chunk's stages, as ChunkTiming names them


class ChunkTiming(Exact):
    """One chunk of a long video: its frames (inclusive), seconds per stage and diffusion calls. The job's
    row (chunk_timings), the summary and the sidecar's chunks.timings_s hold these; rows an older engine
    wrote may lack the frame range and the calls (None)."""

    index: int
    first_frame: int | None = None
    last_frame: int | None = None
    denoise_s: StageSeconds
    decode_s: StageSeconds
    write_s: StageSeconds
    dit_calls: int | None = None  # the chunk's diffusion calls, one per CFG branch and step (None: older)
    dit_calls_skipped: int | None = None  # of those, answered by the step cache

    def stage_seconds(self) -> dict[str, float]:
        """{"denoise_s": ..., "decode_s": ..., "write_s": ...}: a chunk_finished event's timings_s."""
        return {stage: getattr(self, stage) for stage in STAGE_SECONDS}


class ClipQuality(Exact):
    """CLIP scores of a video's frames against its prompt: 100 x cosine of their embeddings."""

    model: str
    mean: float
    min: float
    frames: list[int]  # the frames scored (at most 32, evenly spaced), 0-based
    scores: list[float]  # one per frame in `frames`
    prompt_tokens: int  # the prompt's CLIP tokens read
    prompt_truncated: bool  # the prompt was longer than CLIP reads (77 tokens)


class QualityRecord(Exact):
    """The quality probe's findings for a job (engine/generation/quality.py says what each one means).
    `error`: nothing could be measured; `skipped`: why there are no CLIP scores."""

    frames: int | None = None
    fps: float | None = None
    flicker: float | None = None  # 8-bit luma levels
    motion: float | None = None  # 8-bit luma levels
    clip: ClipQuality | None = None
    skipped: str | None = None
    error: str | None = None
    seconds: float | None = None  # how long the probe took


class JobOutcome(Exact):
    """What a job made and what it cost, under the names its store row, its summary and the sidecar beside
    its video all use: the one record of a result (generation.job.JobResult.outcome makes it). A field
    added here reaches the summary and the sidecar as it is, and the store through a column of its name
    (tests/test_lifecycle.py checks each has one)."""

    video_path: str | None = None
    tokens_path: str | None = None
    sidecar_path: str | None = None
    thumbnail_path: str | None = None
    timings: dict[str, float] = {}  # seconds per stage: text, tokens, denoise, decode, write (compile...)
    peak_memory_bytes: int | None = None
    weights_sha256: dict[str, str] = {}  # {file under the weights root: SHA-256}
    chunk_timings: list[ChunkTiming] = []  # one per finished chunk of a long video


class JobSummary(JobOutcome):
    """A job as the store holds it (daemon.store.JobRow.summary): its outcome, once it has one, and the
    row's own bookkeeping."""

    id: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    status: JobStatus
    prompt: str
    # as submitted: a row an older engine wrote may hold parameters this version no longer knows, so it is
    # checked as JobParams when it is submitted again, not when it is listed
    params: dict[str, Any]
    model: str
    engine_version: str
    error: str | None
    worker: str | None  # which worker ran it last ("cpu", "cuda:1", a Ray node's GPU); None: not yet run
    requeues: int  # times a lost worker (a dead Ray actor) put it back in the queue
    quality: QualityRecord | None  # the quality probe's findings, once it has run
    # chunks already made when it last resumed from its checkpoint (after a killed or stopped engine);
    # None: it ran in one go (or has not run)
    resumed_at_chunk: int | None = None
    group: str | None = None  # the variations queued together share one (Submit.group); None: on its own


class Preset(Exact):
    params: dict[str, Any]  # job parameters other than the prompt
    builtin: bool


class RootCandidate(Exact):
    """One place the engine looked for the weights (weights.layout.where_it_looked)."""

    rule: str
    path: str | None
    applies: bool
    chosen: bool


class WeightFileState(Exact):
    """One release file on disk (weights.downloads.FileState)."""

    local: str
    state: FileState
    size: int | None
    path: str
    optional: bool = False  # the quality probe's CLIP: the weights are complete without it


# events: {"v": 1, "event": name, "seq": n, ...}, discriminated on `event`


class Event(Exact):
    v: Literal[1] = PROTOCOL_VERSION
    seq: int = Field(default=0, ge=0)  # 0 until the engine's hub numbers it as it sends it (from 1)


class JobEvent(Event):
    job_id: str


class JobQueuedEvent(JobEvent):
    event: Literal["job_queued"] = "job_queued"
    prompt: str


class JobStartedEvent(JobEvent):
    event: Literal["job_started"] = "job_started"
    worker: str | None = None  # the worker running it ("cuda:1", "cpu:0")
    # a long video resumed from its checkpoint (a killed or stopped engine left it half-made): the chunks
    # already in its video (it continues with the next) and its chunks in all; None: it starts from the start
    resumed_at_chunk: int | None = None
    chunks: int | None = None


class ProgressReport(Exact):
    """Where a running job stands, as the generation layer reports it (engine.generation.progress); with
    the job's id it is the job_progress event. step/total count inside the stage (denoise: inside the
    current chunk); chunk/chunks are 1-based; frames_written and video_seconds: the video on disk so far."""

    stage: Stage
    step: int
    total: int
    chunk: int
    chunks: int
    rate: Annotated[float, rounded(3)]  # steps per second in this stage so far
    eta_s: Annotated[float | None, rounded(2)]
    frames_written: int
    video_seconds: Annotated[float, rounded(3)]
    # the whole job's remaining time, once there is something to estimate it from
    job_eta_s: Annotated[float | None, rounded(2)]
    dit_calls: int = 0  # diffusion network calls so far in the job, one per CFG branch and denoising step
    cache_skips: int = 0  # of those, answered by the step cache (job parameter `cache`) instead of the blocks
    # a denoising step's live preview, uint8 [H, W, 3] (engine.generation.latent_preview): not on the wire,
    # the engine writes it to the job's live.png and says so with a job_preview event
    _preview: Any = PrivateAttr(default=None)

    @property
    def preview(self) -> Any:
        return self._preview

    @preview.setter
    def preview(self, picture: Any) -> None:
        self._preview = picture

    def for_job(self, job_id: str) -> JobProgressEvent:
        return JobProgressEvent(job_id=job_id, **dict(self))


class JobProgressEvent(ProgressReport, JobEvent):
    event: Literal["job_progress"] = "job_progress"


class ChunkReport(Exact):
    """A chunk of a long video is in the (growing, playable) file, as the generation layer reports it;
    index is 0-based, frames inclusive. With the job's id and the files the engine shows of it, it is the
    chunk_finished event."""

    index: int
    chunks: int
    first_frame: int
    last_frame: int
    frames_written: int
    video_seconds: Annotated[float, rounded(3)]
    timings_s: dict[str, float]  # ChunkTiming.stage_seconds()

    def for_job(self, job_id: str, preview: str, video_partial: str) -> ChunkFinishedEvent:
        return ChunkFinishedEvent(job_id=job_id, preview=preview, video_partial=video_partial, **dict(self))


class ChunkFinishedEvent(ChunkReport, JobEvent):
    event: Literal["chunk_finished"] = "chunk_finished"
    preview: str  # a PNG of the chunk's last frame
    video_partial: str  # the growing video


class JobPreviewEvent(JobEvent):
    """A live preview while the job denoises (at most one a second): a rough picture of the sampler's
    current estimate of the chunk's last latent frame, through a linear latent -> RGB map fitted to the
    model's VAE, at latent resolution (engine.generation.latent_preview). `preview`: its PNG, the job's
    live.png, overwritten by each preview (atomically); step of total within chunk of chunks (1-based)."""

    event: Literal["job_preview"] = "job_preview"
    preview: str
    chunk: int
    chunks: int
    step: int
    total: int


class JobFinishedEvent(JobEvent):
    """`frames` counts the model's frames, as every frame count of a job does (the `frames` parameter, at
    the model's fps); the file holds `video_frames` at `fps` (more than the model's when interpolated)."""

    event: Literal["job_finished"] = "job_finished"
    video: str | None
    frames: int
    fps: int
    video_frames: int | None = None


class JobFailedEvent(JobEvent):
    event: Literal["job_failed"] = "job_failed"
    error: str


class JobStoppedEvent(JobEvent):
    """A job stopped before its end. With `partial`, the chunks finished before are kept as a shorter video
    (`status` says what the job became, `video`, `frames`, `chunks_done` of `chunks` describe it)."""

    partial: bool = False
    status: JobStatus | None = None
    video: str | None = None
    frames: int | None = None
    chunks_done: int | None = None
    chunks: int | None = None


class JobCancelledEvent(JobStoppedEvent):
    event: Literal["job_cancelled"] = "job_cancelled"


class JobInterruptedEvent(JobStoppedEvent):
    """The engine stopped while the job ran, or its worker was lost after it had been re-queued once."""

    event: Literal["job_interrupted"] = "job_interrupted"
    error: str | None = None  # why, when it was not the engine stopping


class JobRequeuedEvent(JobEvent):
    """The worker running the job was lost (a Ray actor, a rank process gone): its files are gone and it
    waits in the queue again, at its old place. That happens once per job."""

    event: Literal["job_requeued"] = "job_requeued"
    worker: str  # the worker that was lost
    error: str  # what happened to it


class JobDeletedEvent(JobEvent):
    event: Literal["job_deleted"] = "job_deleted"


class JobQualityEvent(JobEvent):
    """The quality probe measured a finished job (after its job_finished); the store holds the same."""

    event: Literal["job_quality"] = "job_quality"
    quality: QualityRecord


class ModelsReleasedEvent(Event):
    event: Literal["models_released"] = "models_released"


class QueueChangedEvent(Event):
    """The queue's order or its pause changed (a job moved, the queue paused or resumed)."""

    event: Literal["queue_changed"] = "queue_changed"
    queue: list[str]  # the queued jobs' ids in the order workers take them
    paused: bool


class WeightsJobStarted(Event):
    only: WeightsPart
    root: str


class WeightsJobFailed(Event):
    error: str


class WeightsJobCancelled(Event):
    message: str


class DownloadStartedEvent(WeightsJobStarted):
    event: Literal["download_started"] = "download_started"


class DownloadProgressEvent(Event):
    event: Literal["download_progress"] = "download_progress"
    file: str
    file_done: int
    file_total: int | None
    done: int  # bytes of the whole download
    total: int
    rate: float  # bytes per second
    eta_s: float | None


class DownloadFinishedEvent(Event):
    event: Literal["download_finished"] = "download_finished"
    fetched: list[str]
    skipped: int  # files already there
    refetched: list[str]
    failed: dict[str, str]  # file -> why; those files were removed
    # the engine made the files (the tiny model's random weights), none fetched: `fetched` is empty and
    # `written` names the files it wrote (empty: all were there and checked out, nothing was written)
    generated: bool = False
    written: list[str] = Field(default_factory=list)


class DownloadFailedEvent(WeightsJobFailed):
    event: Literal["download_failed"] = "download_failed"


class DownloadCancelledEvent(WeightsJobCancelled):
    event: Literal["download_cancelled"] = "download_cancelled"


class VerifyStartedEvent(WeightsJobStarted):
    event: Literal["verify_started"] = "verify_started"


class VerifyProgressEvent(Event):
    event: Literal["verify_progress"] = "verify_progress"
    file: str
    done: int  # bytes of this file
    total: int


class VerifyFinishedEvent(Event):
    event: Literal["verify_finished"] = "verify_finished"
    checked: int
    mismatched: list[str]


class VerifyFailedEvent(WeightsJobFailed):
    event: Literal["verify_failed"] = "verify_failed"


class VerifyCancelledEvent(WeightsJobCancelled):
    event: Literal["verify_cancelled"] = "verify_cancelled"


AnyEvent = Annotated[
    JobQueuedEvent
    | JobStartedEvent
    | JobProgressEvent
    | ChunkFinishedEvent
    | JobPreviewEvent
    | JobFinishedEvent
    | JobFailedEvent
    | JobCancelledEvent
    | JobInterruptedEvent
    | JobRequeuedEvent
    | JobDeletedEvent
    | JobQualityEvent
    | ModelsReleasedEvent
    | QueueChangedEvent
    | DownloadStartedEvent
    | DownloadProgressEvent
    | DownloadFinishedEvent
    | DownloadFailedEvent
    | DownloadCancelledEvent
    | VerifyStartedEvent
    | VerifyProgressEvent
    | VerifyFinishedEvent
    | VerifyFailedEvent
    | VerifyCancelledEvent,
    Field(discriminator="event"),
]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
EVENT_MODELS: tuple[type[Event], ...] = get_args(get_args(AnyEvent)[0])
EVENT_TYPES = [type_name(model, "event") for model in EVENT_MODELS]


# replies: {"v": 1, "id": ..., "ok": true, "result": <the request type's reply model>}


class HelloReply(Exact):
    protocol: int
    engine_version: str
    model: str
    random_weights: bool = False  # the model's weights are random ones (ModelSpec.random_weights)
    instance: str  # changes when the engine restarts (its events are numbered anew)
    pid: int
    seq: int  # the last event's number
    limits: LengthLimits
    # its `serve` options but --model (--gpus 0,1, --ckpts DIR...): a client restarting it passes them on
    options: list[str] = Field(default_factory=list)


class SubmitReply(Exact):
    job_id: str
    length: LengthRecord


class CancelReply(Exact):
    job_id: str
    status: Literal["cancelled", "cancelling"]  # cancelling: it was running, the worker stops it


class JobList(Exact):
    jobs: list[JobSummary]
    total: int  # matching jobs, of which `jobs` is one page


class JobReply(Exact):
    job: JobSummary


class JobIdReply(Exact):
    job_id: str


class PresetList(Exact):
    presets: dict[str, Preset]


class PresetNameReply(Exact):
    name: str


class WorkerState(Exact):
    """One of the engine's workers (one per GPU it owns, or a Ray actor)."""

    label: str  # "cuda:1", "cpu:0", "auto" until its torch has loaded
    device: str | None  # the device it runs on (None: the default one)
    state: Literal["loading", "idle", "running", "lost"]
    job_id: str | None  # the job it runs
    models_loaded: list[str]
    memory_used_bytes: int | None = None  # of its GPU, once its models are there (None: CPU, remote)
    memory_total_bytes: int | None = None
    # its job's latest progress and latest finished chunk (None before the first)
    progress: JobProgressEvent | None = None
    last_chunk: ChunkFinishedEvent | None = None


class LaneState(Exact):
    """The engine's LLM lane (`serve --llm-device`): stage 1 on its own device, ahead of the workers."""

    label: str  # its device: "cuda:2", "cpu"
    state: Literal["loading", "idle", "making", "lost"]
    job_id: str | None  # the job whose tokens it makes now
    ready: list[str]  # jobs whose tokens are made and wait for a worker, oldest first
    models_loaded: list[str]


class StatusReply(Exact):
    model: str
    engine_version: str
    pid: int
    uptime_s: float
    running: str | None  # a running job's id (the first worker's); `workers` lists every one
    queue: list[str]  # queued job ids, in the order workers take them
    queue_paused: bool = False  # nothing new starts until the queue is resumed
    models_loaded: list[str]
    downloading: bool
    seq: int
    limits: LengthLimits
    device: str
    memory_used_bytes: int | None
    memory_total_bytes: int | None = None  # known on a GPU
    # the running job's latest progress and its latest finished chunk (None before the first), so a client
    # that (re)connects mid-job draws the stage, step/total and chunk/chunks at once, not at the next step
    progress: JobProgressEvent | None = None
    last_chunk: ChunkFinishedEvent | None = None
    workers: list[WorkerState] = []  # each worker and the job it runs
    llm_lane: LaneState | None = None  # None: each worker runs stage 1 itself
    no_worker: str | None = None  # with no worker: why queued jobs wait (a Ray cluster without the resource)
    options: list[str] = Field(default_factory=list)  # as hello's: the serve options it was started with


class QueueReply(Exact):
    queue: list[str]  # the queued jobs' ids in the order workers take them
    paused: bool  # a paused queue starts no job until it is resumed (the running ones finish)


class SubscribeReply(Exact):
    seq: int
    instance: str
    missed: list[AnyEvent]  # the events after the client's `since`, in order
    gap: bool  # some were already dropped from the engine's backlog
    active: list[JobSummary]  # running, then queued oldest first


class EmptyReply(Exact):
    pass


class ShutdownReply(Exact):
    stopping: bool


class WeightsJobReply(Exact):
    root: str
    only: WeightsPart
    generated: bool = False  # the engine writes the files (the tiny model's random weights), none fetched


class CancelDownloadReply(Exact):
    cancelling: bool


class WeightsStatusReply(Exact):
    root: str
    model: str
    looked: list[RootCandidate]
    files: list[WeightFileState]
    complete: bool
    busy: bool  # a download or verification is running
    # the files are made on this machine (the tiny model's random weights), not downloaded:
    # download_weights writes them
    generated: bool = False
    random_weights: bool = False  # the model's weights are random ones (ModelSpec.random_weights)


class LogTailReply(Exact):
    path: str
    lines: list[str]


# SQLite's integers are 64-bit signed: a larger offset would fail in the database, not as a refusal
MAX_OFFSET = 2**62


class Request(Strict, Generic[R]):
    """What a client asks; `R` is the model of the engine's reply to it (`reply_type`).

    A client builds one without an id (`Status()`), and its connection numbers it as it sends it; the
    engine refuses a line without one (`parse_request`)."""

    v: Literal[1] = PROTOCOL_VERSION
    id: int | str | None = None


class Hello(Request[HelloReply]):
    type: Literal["hello"] = "hello"
    client: str = Field(default="", max_length=200)
    model: str | None = Field(default=None, max_length=100)  # the spec the client expects, if any


class Submit(Request[SubmitReply]):
    type: Literal["submit"] = "submit"
    params: JobParams
    # the variations one command queues together share one (engine/variations.py); None: a job of its own
    group: str | None = Field(default=None, min_length=1, max_length=64)


class Cancel(Request[CancelReply]):
    type: Literal["cancel"] = "cancel"
    job_id: str = Field(max_length=64)


class ListJobs(Request[JobList]):
    type: Literal["list_jobs"] = "list_jobs"
    search: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    status: JobStatus | None = None
    sort: Literal["newest", "oldest", "queue"] = "newest"  # queue: the order workers take queued jobs
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    limit: int = Field(default=50, ge=1, le=500)


class GetJob(Request[JobReply]):
    type: Literal["get_job"] = "get_job"
    job_id: str = Field(max_length=64)


class DeleteJob(Request[JobIdReply]):
    type: Literal["delete_job"] = "delete_job"
    job_id: str = Field(max_length=64)
    delete_files: bool = False


class MoveJob(Request[QueueReply]):
    """Move a queued job to place `to` of the queue (0: next; past the end: last), or by a word."""

    type: Literal["move_job"] = "move_job"
    job_id: str = Field(max_length=64)
    to: Annotated[int, Field(ge=0, le=MAX_OFFSET)] | Literal["top", "bottom", "up", "down"]


class PauseQueue(Request[QueueReply]):
    """Pause the queue (`paused`: true) or resume it (false). Paused, no queued job starts and no tokens
    are made ahead; the running jobs finish. It stays paused when the engine restarts."""

    type: Literal["pause_queue"] = "pause_queue"
    paused: bool = True


class ListPresets(Request[PresetList]):
    type: Literal["list_presets"] = "list_presets"


class SavePreset(Request[PresetNameReply]):
    type: Literal["save_preset"] = "save_preset"
    name: str = Field(min_length=1, max_length=100)
    params: dict[str, Any]


class DeletePreset(Request[PresetNameReply]):
    type: Literal["delete_preset"] = "delete_preset"
    name: str = Field(min_length=1, max_length=100)


class Status(Request[StatusReply]):
    type: Literal["status"] = "status"


class Subscribe(Request[SubscribeReply]):
    type: Literal["subscribe"] = "subscribe"
    since: int = Field(default=0, ge=0)  # the last sequence number this client saw


class ReleaseModels(Request[EmptyReply]):
    type: Literal["release_models"] = "release_models"


class Shutdown(Request[ShutdownReply]):
    type: Literal["shutdown"] = "shutdown"


class DownloadWeights(Request[WeightsJobReply]):
    type: Literal["download_weights"] = "download_weights"
    only: WeightsPart = "all"
    clip: bool = False  # the quality probe's optional CLIP too
    source: WeightsSource = "huggingface"  # where the files come from; older clients send none


class CancelDownload(Request[CancelDownloadReply]):
    """Cancels the running download or verification."""

    type: Literal["cancel_download"] = "cancel_download"


class WeightsStatus(Request[WeightsStatusReply]):
    type: Literal["weights_status"] = "weights_status"
    only: WeightsPart = "all"


class VerifyWeights(Request[WeightsJobReply]):
    type: Literal["verify_weights"] = "verify_weights"
    only: WeightsPart = "all"


class LogTail(Request[LogTailReply]):
    type: Literal["log_tail"] = "log_tail"
    lines: int = Field(default=200, ge=1, le=5000)


class ProbeQuality(Request[JobIdReply]):
    """(Re)measure a finished job's quality: the engine's probe takes it next; a job_quality event says
    what it found."""

    type: Literal["probe_quality"] = "probe_quality"
    job_id: str = Field(max_length=64)


AnyRequest = Annotated[
    Hello
    | Submit
    | Cancel
    | ListJobs
    | GetJob
    | DeleteJob
    | MoveJob
    | PauseQueue
    | ListPresets
    | SavePreset
    | DeletePreset
    | Status
    | Subscribe
    | ReleaseModels
    | Shutdown
    | DownloadWeights
    | CancelDownload
    | WeightsStatus
    | VerifyWeights
    | LogTail
    | ProbeQuality,
    Field(discriminator="type"),
]
REQUEST_ADAPTER: TypeAdapter[AnyRequest] = TypeAdapter(AnyRequest)


REQUEST_MODELS: tuple[type[Request[Any]], ...] = get_args(get_args(AnyRequest)[0])
REQUEST_TYPES = [type_name(model) for model in REQUEST_MODELS]


def reply_type(request: type[Request[R]]) -> type[R]:
    """The model of the engine's reply to a request model: the `R` its class gives `Request`."""
    for base in request.__mro__:
        metadata = getattr(base, "__pydantic_generic_metadata__", None)
        if metadata and metadata["origin"] is Request and metadata["args"]:
            reply: type[R] = metadata["args"][0]
            return reply
    raise TypeError(f"{request.__name__} does not say its reply model (Request[...])")


REPLIES: dict[type[Request[Any]], type[Exact]] = {model: reply_type(model) for model in REQUEST_MODELS}
REPLY_MODELS: dict[str, type[Exact]] = {type_name(request): reply for request, reply in REPLIES.items()}


class ProtocolError(RemoteError):
    """A line that is not a valid request; `code` is machine-readable, the message says what to fix."""

    def __init__(self, code: str, message: str, request_id: int | str | None = None):
        super().__init__(code, message)
        self.request_id = request_id


class WireShapeError(ValueError):
    """A reply or event the engine was about to send does not match its model: a bug in the engine."""


def parse_request(line: bytes) -> AnyRequest:
    """One received line -> a request model, or ProtocolError naming the problem."""
    try:
        data = decode_line(line)
    except FramingError as error:
        raise ProtocolError(error.code, str(error)) from None
    request_id = data.get("id") if isinstance(data.get("id"), int | str) else None
    if data.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {data.get('v')!r} is not supported (this engine speaks {PROTOCOL_VERSION})",
            request_id,
        )
    if request_id is None:
        raise ProtocolError("invalid", "id: a request needs an id, a number or a string, echoed by its reply")
    if data.get("type") not in REQUEST_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown request type {data.get('type')!r}; known: {', '.join(REQUEST_TYPES)}",
            request_id,
        )
    try:
        return REQUEST_ADAPTER.validate_python(data)
    except ValidationError as error:
        raise ProtocolError("invalid", describe_validation(error), request_id) from None


def describe_validation(error: ValidationError, what: str = "request") -> str:
    tags = {*REQUEST_TYPES, *EVENT_TYPES}  # a tagged union's member name in the location says nothing new
    parts = []
    for problem in error.errors()[:5]:
        location = problem["loc"]
        if error.title.startswith("tagged-union") and location and location[0] in tags:
            location = location[1:]  # only where the union puts it ("status" is a field name too)
        where = ".".join(str(part) for part in location)
        parts.append(f"{where or what}: {problem['msg']}")
    more = len(error.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def encode(message: dict[str, Any]) -> bytes:
    return encode_line(message)


def reply_model(request_type: str, result: object) -> Exact:
    """A handler's result, checked to be its request type's reply model (its fields were checked when it
    was made); WireShapeError when it is anything else."""
    model = REPLY_MODELS[request_type]
    if not isinstance(result, model):
        raise WireShapeError(
            f"the reply to {request_type} must be a {model.__name__}, not {type(result).__name__}"
        )
    return result


def encode_reply(request_type: str, request_id: int | str | None, result: object) -> bytes:
    """A success reply whose result is checked to be the request type's reply model first."""
    checked = reply_model(request_type, result)
    return encode({"id": request_id, "ok": True, "result": checked.model_dump(mode="json")})


def error_reply(request_id: int | str | None, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def event(kind: str, seq: int, **fields: Any) -> dict[str, Any]:
    """An event as the engine logs and sends it, checked against its model; WireShapeError otherwise."""
    try:
        checked = EVENT_ADAPTER.validate_python({"event": kind, "seq": seq, **fields})
    except ValidationError as error:
        raise WireShapeError(f"the {kind} event: {describe_validation(error, 'event')}") from None
    return checked.model_dump(mode="json")


def parse_event(message: dict[str, Any]) -> AnyEvent:
    """A received event message -> its model (clients); pydantic's ValidationError for another shape."""
    return EVENT_ADAPTER.validate_python(message)


def parse_reply(request_type: str, result: dict[str, Any]) -> Exact:
    """A received reply's result -> its request type's reply model (clients)."""
    return REPLY_MODELS[request_type].model_validate(result)


def request_line(request_id: int, request: Request[Any]) -> bytes:
    """A request model as the line a client sends, numbered `request_id`."""
    return encode({**request.model_dump(mode="json", exclude={"v", "id"}), "id": request_id})


def read_reply(request: Request[R], result: dict[str, Any], client: str) -> R:
    """A received reply's result as the request's reply model (clients). A shape this version cannot read
    is a RemoteError that says why and what to do; `client` names the program in that message."""
    try:
        return reply_type(type(request)).model_validate(result)
    except ValidationError as error:
        problem = describe_validation(error, "result")
        raise RemoteError(
            "bad_reply",
            f"the engine's reply to {type_name(type(request))} does not fit this {client} ({problem}); it is "
            f"probably another version: stop it (landiff-engine stop) and start {client} again",
        ) from None
