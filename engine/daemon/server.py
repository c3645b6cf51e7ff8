"""`landiff-engine serve`: the asyncio Unix-socket server in front of the store and the GPU worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from engine import __version__
from engine.daemon.events import EventHub
from engine.daemon.store import Store
from engine.paths import database_path, log_path, outputs_dir, private_dir, socket_path
from engine.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    Cancel,
    CancelDownload,
    DeleteJob,
    DeletePreset,
    DownloadWeights,
    GetJob,
    Hello,
    JobParams,
    ListJobs,
    ListPresets,
    LogTail,
    ProtocolError,
    ReleaseModels,
    SavePreset,
    Shutdown,
    Status,
    Submit,
    Subscribe,
    VerifyWeights,
    WeightsStatus,
    encode,
    error_reply,
    parse_request,
    reply,
)

log = logging.getLogger("landiff.engine")
READ_CHUNK = 64 * 1024


class EngineAlreadyRunning(RuntimeError):
    pass


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


def socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def read_lines(reader: asyncio.StreamReader):
    """Yield each received line (without its newline); an over-long line yields None once and is skipped."""
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            return
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_LINE_BYTES:
                    if not skipping:
                        yield None
                    skipping = True
                    buffer.clear()
                break
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if skipping:
                skipping = False
                continue
            yield None if len(line) > MAX_LINE_BYTES else line


class Engine:
    def __init__(
        self, model: str, ckpts: Path | None, idle_release_s: float = 600.0, expected_uid: int | None = None
    ):
        self.model, self.ckpts, self.idle_release_s = model, ckpts, idle_release_s
        self.expected_uid = os.getuid() if expected_uid is None else expected_uid
        self.hub = EventHub()
        self.started = time.time()
        self.instance = f"{os.getpid()}-{int(self.started)}"
        self.stopped: asyncio.Event | None = None
        self.download = None

    # lifecycle

    async def serve(self) -> None:
        path = socket_path()
        private_dir(path.parent)
        if path.exists() or path.is_symlink():
            if socket_answers(path):
                raise EngineAlreadyRunning(
                    f"an engine is already running on {path} (`landiff-engine status` shows it)"
                )
            path.unlink()  # stale: its engine died
        private_dir(outputs_dir())
        self.store = Store(database_path())
        interrupted = self.store.interrupt_running()
        if interrupted:
            log.warning("marked %d job(s) interrupted: %s", len(interrupted), ", ".join(interrupted))
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        self.worker = self.start_worker(self.model)
        previous = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self.connection, path=str(path), limit=MAX_LINE_BYTES)
        finally:
            os.umask(previous)
        path.chmod(0o600)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopped.set)
        log.info("landiff-engine %s (%s model) listening on %s", __version__, self.model, path)
        print(f"ready {path}", flush=True)
        async with server:
            await self.stopped.wait()
        self.worker.stop()
        await asyncio.to_thread(self.worker.join, 30)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("engine stopped")

    def start_worker(self, model: str):
        from engine.daemon.worker import JobWorker
        from engine.weights.layout import layout_for

        def make_pipeline():  # in the worker thread: torch and the models' code load there
            from engine.generation.pipeline import Pipeline
            from engine.specs import get_spec

            spec = get_spec(model)
            layout = layout_for(spec.name, self.ckpts)
            if spec.name == "tiny":
                from engine.weights.tiny import ensure_tiny_release

                ensure_tiny_release(layout, spec)
            return Pipeline(spec, layout)

        worker = JobWorker(
            self.store, make_pipeline, self.publish_threadsafe, outputs_dir(), self.idle_release_s
        )
        worker.start()
        return worker

    def publish_threadsafe(self, kind: str, **fields: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: self.hub.publish(kind, **fields))

    # connections

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = writer.get_extra_info("socket")
        try:
            uid = peer_uid(raw)
        except OSError:
            uid = -1
        if uid != self.expected_uid:
            writer.write(error_reply(None, "forbidden", "this engine only serves its owner's user id"))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        outgoing: asyncio.Queue = asyncio.Queue()
        sender = asyncio.create_task(self.send_loop(writer, outgoing))
        subscription: asyncio.Queue | None = None
        forwarder: asyncio.Task | None = None
        try:
            async for line in read_lines(reader):
                if line is None:
                    outgoing.put_nowait(
                        error_reply(None, "line_too_long", f"lines are limited to {MAX_LINE_BYTES} bytes")
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    request = parse_request(line)
                except ProtocolError as error:
                    outgoing.put_nowait(error_reply(error.request_id, error.code, error.message))
                    continue
                if isinstance(request, Subscribe) and subscription is None:
                    subscription = self.hub.subscribe()
                    forwarder = asyncio.create_task(self.forward(subscription, outgoing))
                try:
                    result = self.dispatch(request)
                except RequestFailed as error:
                    outgoing.put_nowait(error_reply(request.id, error.code, str(error)))
                    continue
                outgoing.put_nowait(reply(request.id, result))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if subscription is not None:
                self.hub.unsubscribe(subscription)
            if forwarder is not None:
                forwarder.cancel()
            outgoing.put_nowait(None)
            with contextlib.suppress(Exception):
                await sender

    async def send_loop(self, writer: asyncio.StreamWriter, outgoing: asyncio.Queue) -> None:
        try:
            while (message := await outgoing.get()) is not None:
                writer.write(message)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def forward(self, subscription: asyncio.Queue, outgoing: asyncio.Queue) -> None:
        while True:
            outgoing.put_nowait(encode(await subscription.get()))

    # requests

    def dispatch(self, request) -> dict[str, Any]:
        handler = getattr(self, f"on_{request.type}")
        return handler(request)

    def on_hello(self, request: Hello) -> dict[str, Any]:
        if request.model is not None and request.model != self.model:
            raise RequestFailed(
                "wrong_model",
                f"this engine serves the {self.model!r} model, not {request.model!r}; "
                "stop it (landiff-engine stop) to start one with another model",
            )
        return {
            "protocol": PROTOCOL_VERSION,
            "engine_version": __version__,
            "model": self.model,
            "instance": self.instance,
            "pid": os.getpid(),
            "seq": self.hub.seq,
            "limits": self.limits(),
        }

    def limits(self) -> dict[str, Any]:
        from engine.generation.lengths import limits, rules_for

        return limits(rules_for(self.model))

    def on_submit(self, request: Submit) -> dict[str, Any]:
        from engine.generation.lengths import plan_length, rules_for

        params = request.params
        try:  # a length the model cannot make is refused now, not when the job starts
            plan = plan_length(rules_for(self.model), params.frames, params.overlap)
        except ValueError as error:
            raise RequestFailed("invalid", str(error)) from None
        row = self.store.add_job(params.model_dump(), self.model, __version__)
        self.hub.publish("job_queued", job_id=row.id, prompt=row.prompt)
        self.worker.notify()
        return {"job_id": row.id, "length": plan.record()}

    def on_cancel(self, request: Cancel) -> dict[str, Any]:
        row = self.job(request.job_id)
        if row.status == "queued":
            self.store.update(row.id, status="cancelled", finished_at=time.time())
            self.hub.publish("job_cancelled", job_id=row.id)
            return {"job_id": row.id, "status": "cancelled"}
        if row.status == "running" and self.worker.cancel(row.id):
            return {"job_id": row.id, "status": "cancelling"}
        raise RequestFailed(
            "not_cancellable", f"job {row.id} is {row.status}; only queued or running jobs cancel"
        )

    def on_list_jobs(self, request: ListJobs) -> dict[str, Any]:
        rows, total = self.store.list_jobs(
            request.search, request.status, request.sort, request.offset, request.limit
        )
        return {"jobs": [row.summary() for row in rows], "total": total}

    def on_get_job(self, request: GetJob) -> dict[str, Any]:
        return {"job": self.job(request.job_id).summary()}

    def on_delete_job(self, request: DeleteJob) -> dict[str, Any]:
        row = self.job(request.job_id)
        if row.status in ("queued", "running"):
            raise RequestFailed("busy", f"job {row.id} is {row.status}; cancel it before deleting")
        self.store.delete(row.id)
        if request.delete_files:
            shutil.rmtree(outputs_dir() / row.id, ignore_errors=True)
        self.hub.publish("job_deleted", job_id=row.id)
        return {"job_id": row.id}

    def on_list_presets(self, request: ListPresets) -> dict[str, Any]:
        return {"presets": self.store.presets()}

    def on_save_preset(self, request: SavePreset) -> dict[str, Any]:
        unknown = set(request.params) - set(JobParams.model_fields) - set()
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
            self.store.save_preset(request.name, request.params)
        except ValueError as error:
            raise RequestFailed("builtin", str(error)) from None
        return {"name": request.name}

    def on_delete_preset(self, request: DeletePreset) -> dict[str, Any]:
        try:
            found = self.store.delete_preset(request.name)
        except ValueError as error:
            raise RequestFailed("builtin", str(error)) from None
        if not found:
            raise RequestFailed("not_found", f"no preset named {request.name!r}")
        return {"name": request.name}

    def on_status(self, request: Status) -> dict[str, Any]:
        return {
            "model": self.model,
            "engine_version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "running": self.worker.current,
            "queue": self.store.queued_ids(),
            "models_loaded": self.worker.loaded_models(),
            "downloading": self.download is not None and self.download.is_alive(),
            "seq": self.hub.seq,
            "limits": self.limits(),
            **device_status(self.worker.torch_ready),
        }

    def on_subscribe(self, request: Subscribe) -> dict[str, Any]:
        missed, gap = self.hub.since(request.since)
        active = [row.summary() for row in self.store.list_jobs(status="running")[0]]
        active += [
            row.summary() for row in self.store.list_jobs(status="queued", sort="oldest", limit=500)[0]
        ]
        return {
            "seq": self.hub.seq,
            "instance": self.instance,
            "missed": missed,
            "gap": gap,
            "active": active,
        }

    def on_download_weights(self, request: DownloadWeights) -> dict[str, Any]:
        from engine.daemon.weights_jobs import DownloadJob

        return self.start_weights_job(DownloadJob, request.only)

    def on_verify_weights(self, request: VerifyWeights) -> dict[str, Any]:
        from engine.daemon.weights_jobs import VerifyJob

        return self.start_weights_job(VerifyJob, request.only)

    def start_weights_job(self, job_class, only: str) -> dict[str, Any]:
        if self.download is not None and self.download.is_alive():
            raise RequestFailed(
                "busy", "a weights download or verification is running; follow its events or cancel it"
            )
        root = self.weights_root()
        self.download = job_class(root, only, self.publish_threadsafe, self.checksums(root))
        self.download.start()
        return {"root": str(root), "only": only}

    def on_cancel_download(self, request: CancelDownload) -> dict[str, Any]:
        if self.download is None or not self.download.is_alive():
            raise RequestFailed("not_running", "no download or verification is running")
        self.download.cancelled.set()
        return {"cancelling": True}

    def on_weights_status(self, request: WeightsStatus) -> dict[str, Any]:
        from engine.weights.downloads import file_states, planned_files
        from engine.weights.layout import where_it_looked

        root = self.weights_root()
        states = file_states(root, planned_files(root, request.only, self.checksums(root)))
        return {
            "root": str(root),
            "model": self.model,
            "looked": where_it_looked(self.ckpts),
            "files": [vars(state) for state in states],
            "complete": all(state.state in ("verified", "present") for state in states),
            "busy": self.download is not None and self.download.is_alive(),
        }

    def checksums(self, root: Path) -> dict[str, str] | None:
        """The release's sums; LANDIFF_CHECKSUMS replaces them (mirrors, tests); tiny uses its own list."""
        from engine.weights.downloads import read_checksums
        from engine.weights.layout import TINY_CHECKSUMS

        path = os.environ.get("LANDIFF_CHECKSUMS")
        if path:
            return read_checksums(Path(path))
        if self.model == "tiny" and (root / TINY_CHECKSUMS).is_file():
            return read_checksums(root / TINY_CHECKSUMS)
        return None

    def weights_root(self) -> Path:
        from engine.weights.layout import layout_for

        return layout_for(self.model, self.ckpts).root

    def on_log_tail(self, request: LogTail) -> dict[str, Any]:
        path = log_path()
        if not path.is_file():
            return {"path": str(path), "lines": []}
        with open(path, "rb") as handle:  # read only the end: the log grows without bound
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - request.lines * 400, 0))
            lines = handle.read().decode(errors="replace").splitlines()
        return {"path": str(path), "lines": lines[-request.lines :]}

    def on_release_models(self, request: ReleaseModels) -> dict[str, Any]:
        self.worker.request_release()
        return {}

    def on_shutdown(self, request: Shutdown) -> dict[str, Any]:
        self.loop.call_later(0.05, self.stopped.set)
        return {"stopping": True}

    def job(self, job_id: str):
        row = self.store.get(job_id)
        if row is None:
            raise RequestFailed("not_found", f"no job {job_id!r}")
        return row


class RequestFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def device_status(torch_ready: bool) -> dict[str, Any]:
    if not torch_ready:  # importing torch here would stall every client for seconds
        return {"device": "starting (torch is loading)", "memory_used_bytes": None}
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {
            "device": torch.cuda.get_device_name(),
            "memory_used_bytes": total - free,
            "memory_total_bytes": total,
        }
    import resource

    return {"device": "cpu", "memory_used_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def configure_logging() -> None:
    private_dir(log_path().parent)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.StreamHandler(), logging.FileHandler(log_path())):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def serve(model: str, ckpts: Path | None, idle_release_s: float) -> None:
    configure_logging()
    asyncio.run(Engine(model, ckpts, idle_release_s).serve())
