"""A scripted stand-in for the engine link, for snapshot tests that need fixed, repeatable content.

The Pilot tests in test_tui.py drive the real engine; this double only feeds the screens known data. It
speaks the protocol's models both ways: each request the TUI sends goes through the wire and is parsed as
the engine would parse it, each reply and event is built from `engine.protocol`, and each answer must be
the request's reply model, so a changed shape fails here too.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine import __version__
from engine import protocol as p
from engine.generation.lengths import limits, plan_length, rules_for
from engine.protocol import R
from engine.specs import get_spec
from engine.wire import RemoteError

Q = TypeVar("Q", bound=p.Request[Any])

CREATED = 1_764_115_200.0  # 2025-11-26 00:00 UTC
PROMPTS = ["A snail crawling on green moss.", "A red kite over a windy beach at dusk.", "Waves at night."]


def job(index: int, status: str = "finished", **extra: Any) -> p.JobSummary:
    prompt = PROMPTS[index % 3]
    params = {"prompt": prompt, "seed": 40 + index, "cfg": 7.5, "motion_score": 0.1, "temperature": 1.0}
    params["steps"] = 50
    fields: dict[str, Any] = {
        "id": f"{index:08x}feedc0de{index:012x}",
        "created_at": CREATED - 3600 * index,
        "started_at": None,
        "finished_at": None,
        "status": status,
        "prompt": prompt,
        "params": params,
        "model": "tiny",
        "engine_version": __version__,
        "weights_sha256": {},
        "timings": {"text": 0.05, "tokens": 0.31, "denoise": 0.9, "decode": 0.8, "write": 0.1},
        "peak_memory_bytes": 700 * 2**20,
        "error": None,
        "video_path": f"/data/outputs/{index:08x}/video.mp4",
        "tokens_path": None,
        "sidecar_path": None,
        "thumbnail_path": None,
        "chunk_timings": [],
        "worker": "cpu",
        "requeues": 0,
        "quality": None,
    }
    return p.JobSummary(**{**fields, **extra})


def weights_status(complete: bool) -> p.WeightsStatusReply:
    state: p.FileState = "verified" if complete else "missing"
    names = [
        "LanDiff/llm/model.safetensors",
        "LanDiff/tokenizer/model.safetensors",
        "flan-t5-xxl/config.json",
    ]
    user_dir = "/home/user/.local/share/landiff/weights"
    return p.WeightsStatusReply(
        root=user_dir,
        model="landiff",
        looked=[
            p.RootCandidate(rule="$LANDIFF_HOME", path=None, applies=False, chosen=False),
            p.RootCandidate(
                rule="./ckpts holding LanDiff/", path="/home/user/ckpts", applies=False, chosen=False
            ),
            p.RootCandidate(rule="the user data dir", path=user_dir, applies=True, chosen=True),
        ],
        files=[
            p.WeightFileState(local=name, state=state, size=2**30 if complete else None, path=name)
            for name in names
        ],
        complete=complete,
        busy=False,
    )


class ScriptedLink:
    """What LanDiffApp needs of an EngineLink: start/close, `connected`, and `call` returning reply models.

    Each scripted request model has its `on_<type>` method, which gets the request as the engine parsed it
    and returns its reply model (test_protocol checks the methods against the protocol)."""

    def __init__(
        self,
        jobs: list[p.JobSummary],
        weights_complete: bool = True,
        refusals: dict[type[p.Request[Any]], RemoteError] | None = None,
    ):
        self.jobs = jobs
        self.weights_complete = weights_complete
        self.refusals = refusals or {}  # request model -> the error the engine answers it with
        self.requests: list[p.Request[Any]] = []  # as the engine parsed them, in order
        self.ids = itertools.count(1)
        self.model = "tiny" if weights_complete else "landiff"  # the first-run offer is for the release
        self.autostart = False
        self.path = Path("/nonexistent/engine.sock")
        self.connected = False
        self.starting = False
        self.restarts: list[str | None] = []
        self.seq = 0
        self.progress: p.JobProgressEvent | None = None  # what `status` says of the running job
        self.last_chunk: p.ChunkFinishedEvent | None = None
        self.generated = False  # weights made on this machine (the tiny model), not downloaded
        self.paused = False  # the queue's pause (pause_queue)
        self.log_lines = ["2025-11-26 00:00:00,000 INFO engine listening"]  # the engine's log, oldest first
        # the app's callbacks, set by the app it is given to (as on an EngineLink)
        self.on_event: Callable[[p.AnyEvent], None] = lambda event: None
        self.on_connected: Callable[[p.HelloReply, p.SubscribeReply], None] = lambda hello, caught_up: None
        self.on_state: Callable[[str, str], None] = lambda state, message: None

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self.connect)

    def connect(self) -> None:
        self.connected = True
        self.on_connected(self.hello(), self.caught_up())

    def hello(self) -> p.HelloReply:
        return p.HelloReply(
            protocol=p.PROTOCOL_VERSION,
            engine_version=__version__,
            model=self.model,
            random_weights=get_spec(self.model).random_weights,
            instance="4242-1",
            pid=4242,
            seq=self.seq,
            limits=p.LengthLimits(**limits(rules_for(self.model))),
        )

    def caught_up(self) -> p.SubscribeReply:
        active = [job for job in self.jobs if job.status in ("running", "queued")]
        return p.SubscribeReply(seq=self.seq, instance="4242-1", missed=[], gap=False, active=active)

    def publish(self, kind: str, **fields: Any) -> p.AnyEvent:
        """Deliver an event as the engine would send it (numbered, checked against its model)."""
        self.seq += 1
        event = p.parse_event(p.event(kind, self.seq, **fields))
        self.on_event(event)
        return event

    async def close(self) -> None:
        self.connected = False

    async def start_engine(self, model: str | None = None, verb: str = "starting") -> None:
        self.model = model or self.model
        self.connect()

    async def restart(self, model: str | None = None) -> None:
        self.restarts.append(model)
        await self.start_engine(model)

    async def call(self, request: p.Request[R]) -> R:
        """The scripted answer to the request as the engine would get it (through the wire, parsed by its
        `parse_request`, which refuses what it refuses); a ProtocolError like the engine's otherwise."""
        parsed = p.parse_request(p.request_line(next(self.ids), request))
        self.requests.append(parsed)
        model = type(parsed)
        if model in self.refusals:
            raise self.refusals[model]
        answer = getattr(self, f"on_{p.type_name(model)}", None)
        if answer is None:
            raise RemoteError("unknown", f"the double does not script {model.__name__}")
        reply = answer(parsed)
        expected = p.reply_type(type(request))
        if not isinstance(reply, expected):
            raise TypeError(f"the double answered {model.__name__} with a {type(reply).__name__}")
        return reply

    def sent(self, model: type[Q]) -> list[Q]:
        """The requests of one model the TUI sent, in order."""
        return [request for request in self.requests if isinstance(request, model)]

    # one method per scripted request type: it gets the parsed request, returns the reply model

    def on_hello(self, request: p.Hello) -> p.HelloReply:
        return self.hello()

    def on_subscribe(self, request: p.Subscribe) -> p.SubscribeReply:
        return self.caught_up()

    def on_list_jobs(self, request: p.ListJobs) -> p.JobList:
        found = [j for j in self.jobs if (request.search or "").lower() in j.prompt.lower()]
        found = [j for j in found if request.status in (None, j.status)]
        if request.sort == "oldest":  # else as scripted: the tests list their jobs newest first
            found.sort(key=lambda j: j.created_at)
        return p.JobList(jobs=found[request.offset : request.offset + request.limit], total=len(found))

    def on_get_job(self, request: p.GetJob) -> p.JobReply:
        found = [j for j in self.jobs if j.id == request.job_id]
        if not found:
            raise RemoteError("not_found", f"no job {request.job_id!r}")
        return p.JobReply(job=found[0])

    def on_list_presets(self, request: p.ListPresets) -> p.PresetList:
        return p.PresetList(
            presets={
                "quick draft": p.Preset(params={"steps": 20}, builtin=True),
                "reference defaults": p.Preset(
                    params={"cfg": 7.5, "motion_score": 0.1, "temperature": 1.0, "steps": 50, "seed": 42},
                    builtin=True,
                ),
            }
        )

    def on_weights_status(self, request: p.WeightsStatus) -> p.WeightsStatusReply:
        status = weights_status(self.weights_complete)
        if self.generated:
            return status.model_copy(update={"model": "tiny", "generated": True, "random_weights": True})
        return status

    def on_status(self, request: p.Status) -> p.StatusReply:
        return p.StatusReply(
            model=self.model,
            engine_version=__version__,
            pid=4242,
            uptime_s=80.0,
            running=next((j.id for j in self.jobs if j.status == "running"), None),
            queue=[j.id for j in self.jobs if j.status == "queued"],
            queue_paused=self.paused,
            models_loaded=["stage1", "stage2"],
            downloading=False,
            seq=self.seq,
            limits=p.LengthLimits(**limits(rules_for(self.model))),
            device="NVIDIA H200",
            memory_used_bytes=30 * 2**30,
            memory_total_bytes=140 * 2**30,
            progress=self.progress,
            last_chunk=self.last_chunk,
            workers=[self.worker()],
        )

    def worker(self) -> p.WorkerState:
        """The engine's one worker, running the running job (an engine of one GPU)."""
        running = next((j.id for j in self.jobs if j.status == "running"), None)
        return p.WorkerState(
            label="cpu",
            device=None,
            state="running" if running else "idle",
            job_id=running,
            models_loaded=["stage1", "stage2"],
            progress=self.progress if running else None,
            last_chunk=self.last_chunk if running else None,
        )

    def on_log_tail(self, request: p.LogTail) -> p.LogTailReply:
        return p.LogTailReply(path="/data/engine.log", lines=self.log_lines[-request.lines :])

    def on_submit(self, request: p.Submit) -> p.SubmitReply:
        plan = plan_length(rules_for(self.model), request.params.frames, request.params.overlap)
        return p.SubmitReply(
            job_id="0000000000000000000000000000abcd", length=p.LengthRecord(**plan.record())
        )

    def on_cancel(self, request: p.Cancel) -> p.CancelReply:
        return p.CancelReply(job_id=request.job_id, status="cancelling")

    def on_move_job(self, request: p.MoveJob) -> p.QueueReply:
        queued = [j for j in self.jobs if j.status == "queued"]
        moving = next(j for j in queued if j.id == request.job_id)
        at = queued.index(moving)
        to = {"top": 0, "bottom": len(queued), "up": at - 1, "down": at + 1}.get(str(request.to), request.to)
        queued.remove(moving)
        queued.insert(max(0, min(int(to), len(queued))), moving)
        self.jobs = [j for j in self.jobs if j.status != "queued"] + queued
        return self.queue_changed()

    def on_pause_queue(self, request: p.PauseQueue) -> p.QueueReply:
        self.paused = request.paused
        return self.queue_changed()

    def queue_changed(self) -> p.QueueReply:
        """The queue as it is now, said as the engine says it: a reply, and a queue_changed event."""
        queue = [j.id for j in self.jobs if j.status == "queued"]
        self.publish("queue_changed", queue=queue, paused=self.paused)
        return p.QueueReply(queue=queue, paused=self.paused)

    def on_delete_job(self, request: p.DeleteJob) -> p.JobIdReply:
        self.jobs = [j for j in self.jobs if j.id != request.job_id]
        return p.JobIdReply(job_id=request.job_id)

    def on_save_preset(self, request: p.SavePreset) -> p.PresetNameReply:
        return p.PresetNameReply(name=request.name)

    def on_delete_preset(self, request: p.DeletePreset) -> p.PresetNameReply:
        return p.PresetNameReply(name=request.name)

    def on_download_weights(self, request: p.DownloadWeights) -> p.WeightsJobReply:
        root = weights_status(self.weights_complete).root
        return p.WeightsJobReply(root=root, only=request.only, generated=self.generated)

    def on_verify_weights(self, request: p.VerifyWeights) -> p.WeightsJobReply:
        return p.WeightsJobReply(root=weights_status(self.weights_complete).root, only=request.only)

    def on_cancel_download(self, request: p.CancelDownload) -> p.CancelDownloadReply:
        return p.CancelDownloadReply(cancelling=True)

    def on_release_models(self, request: p.ReleaseModels) -> p.EmptyReply:
        return p.EmptyReply()

    def on_shutdown(self, request: p.Shutdown) -> p.ShutdownReply:
        return p.ShutdownReply(stopping=True)
