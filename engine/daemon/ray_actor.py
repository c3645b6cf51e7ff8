"""The actor of a `serve --ray` worker: one per GPU of a cluster node, a warm Pipeline in its own process.

`PipelineHost` is a plain class; ray_pipeline.actor_class makes it a Ray actor (so importing this module
loads neither ray nor torch). One job at a time: `run` is a generator that Ray streams back to the engine,
item by item: the pipeline's progress reports, a `ChunkSent` per finished chunk, `Loaded` when the warm
models change, and one last `Outcome`. `cancel` runs beside it (the actor's second concurrency group) and
stops the job it names at its next step, as a local cancel does.

The actor renders into a scratch folder on its own box and sends the files back: a cluster's boxes share no
disk as a rule. Each chunk carries the bytes it added to the growing video (the engine appends them to its own
copy, which is playable after every chunk, as a local job's is); the end carries the small files (tokens,
thumbnail, record) and the video's SHA-256, which the engine checks against its copy before renaming it.

What the actor streams is `bytes` only, each item one frame of `pack`: a JSON header (plain types) and raw
blobs. The engine reads it with `unpack` and rebuilds its own objects from checked fields (ray_pipeline.
read_item), so nothing the actor sends becomes an object of a class it chose. A scratch folder is named after
its actor's process: one whose process died (killed with its job) is removed by the next actor that starts on
that box, and `tidy` removes an actor's own when the engine stops.

Every box runs its own installed landiff: `hello` says which version (the engine admits no actor of another),
and the weights are this box's, found by the engine's rules here (`weights_layout`): the first job on a box
that lacks them fetches them (`fetch_weights`: the release downloaded and verified, the tiny model's made),
as `landiff-engine weights download --ray` does on every node at once.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import logging
import os
import queue
import shutil
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.daemon.config import RunOptions
    from engine.generation.pipeline import Pipeline

log = logging.getLogger(__name__)
HASH_BLOCK = 1 << 20
SCRATCH_PREFIX = "landiff-ray-job-"  # then the actor's pid and a dash: landiff-ray-job-<pid>-<random>
TIDY_WAIT_S = 10.0  # how long `tidy` waits for a running job's thread to leave its scratch folder
# the bounds of one streamed item: a chunk's share of the video is its largest part
MAX_ITEM_BYTES = 512 << 20
MAX_HEADER_BYTES = 4 << 20
HEADER_LENGTH = struct.Struct(">I")
ITEM_KINDS = ("progress", "chunk", "loaded", "weights", "outcome")
FETCH_LOCK = ".landiff-fetch.lock"  # in a weights root: one fetch at a time on a box (an actor per GPU)
MAX_REPORT_CHARS = 400  # of a fetch's error text, and of each failed file's reason


class BadItem(ValueError):
    """An item of an actor's stream that is not a frame the engine reads."""


def pack(kind: str, fields: dict[str, Any], blobs: dict[str, bytes] | None = None) -> bytes:
    """One item of the stream: a JSON header {kind, fields, blob sizes} then the blobs' bytes, in order."""
    blobs = blobs or {}
    header = json.dumps(
        {"kind": kind, "fields": fields, "blobs": [[name, len(data)] for name, data in blobs.items()]},
        allow_nan=False,
    ).encode()
    return b"".join([HEADER_LENGTH.pack(len(header)), header, *blobs.values()])


def unpack(item: object) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """The kind, fields and blobs of a frame `pack` made; BadItem for anything else (not bytes, too large,
    a header that is not the JSON object it must be, blobs that do not add up)."""
    if type(item) is not bytes:
        raise BadItem(f"an item of type {type(item).__name__}, not bytes")
    if len(item) > MAX_ITEM_BYTES:
        raise BadItem(f"an item of {len(item)} bytes (at most {MAX_ITEM_BYTES})")
    if len(item) < HEADER_LENGTH.size:
        raise BadItem("an item too short for its header")
    (size,) = HEADER_LENGTH.unpack_from(item)
    start = HEADER_LENGTH.size + size
    if size > MAX_HEADER_BYTES or start > len(item):
        raise BadItem(f"a header of {size} bytes")
    try:
        header = json.loads(item[HEADER_LENGTH.size : start])
    except ValueError as error:
        raise BadItem(f"a header that is not JSON ({error})") from None
    if not isinstance(header, dict) or set(header) != {"kind", "fields", "blobs"}:
        raise BadItem("a header without exactly kind, fields and blobs")
    kind, fields, sizes = header["kind"], header["fields"], header["blobs"]
    if kind not in ITEM_KINDS or not isinstance(fields, dict) or not isinstance(sizes, list):
        raise BadItem(f"an item of kind {str(kind)[:40]!r}")
    blobs: dict[str, bytes] = {}
    for entry in sizes:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and 0 <= entry[1] <= len(item) - start
        ):
            raise BadItem("a blob entry that is not [name, size]")
        name, length = entry
        blobs[name] = item[start : start + length]
        start += length
    if start != len(item) or len(blobs) != len(sizes):
        raise BadItem("blobs that do not add up to the item")
    return kind, fields, blobs


@dataclass(frozen=True)
class ChunkSent:
    """A finished chunk: the pipeline's ChunkDone with only its preview frame (the chunk's last) for frames,
    and the bytes the chunk appended to the growing video."""

    done: Any  # engine.generation.job.ChunkDone; its partial_video names the actor's scratch file
    video_tail: bytes


@dataclass(frozen=True)
class Loaded:
    """The actor's warm models changed: what the engine's status shows for this worker."""

    models: list[str]
    weight_bytes: int


@dataclass(frozen=True)
class SentFiles:
    """A finished (or partly finished, then cancelled) job's result and its files' contents.

    `result` is the actor's JobResult (its paths name the actor's scratch folder); `record` the sidecar's
    JSON record; the video itself already went to the engine chunk by chunk, `video_sha256` checks it."""

    result: Any  # engine.generation.job.JobResult
    tokens: bytes
    thumbnail: bytes
    record: dict[str, Any]
    video_sha256: str
    video_size: int


@dataclass(frozen=True)
class Outcome:
    """How the job ended: finished (files), cancelled (files of the kept chunks, or None), or failed
    (`error`: the exception the pipeline raised, re-raised by the engine as a local failure would be)."""

    status: str  # "finished", "cancelled" or "failed"
    files: SentFiles | None = None
    message: str = ""
    error: BaseException | None = None


MAX_MESSAGE_CHARS = 4000  # of a failed job's error text


def progress_item(report) -> bytes:
    return pack("progress", {"report": report.model_dump(mode="json")})


def loaded_item(loaded: Loaded) -> bytes:
    return pack("loaded", {"models": list(loaded.models), "weight_bytes": int(loaded.weight_bytes)})


def chunk_item(done, video_tail: bytes) -> bytes:
    """A finished chunk: its report and timing, its preview frame (raw uint8 [H, W, 3]) and the bytes it
    added to the video."""
    import numpy as np

    preview = np.ascontiguousarray(done.preview, dtype=np.uint8)
    fields = {
        "report": done.report.model_dump(mode="json"),
        "timing": done.timing.model_dump(mode="json"),
        "preview_shape": list(preview.shape),
    }
    return pack("chunk", fields, {"preview": preview.tobytes(), "video": video_tail})


def outcome_item(
    status: str, files: SentFiles | None = None, message: str = "", error: BaseException | None = None
) -> bytes:
    """The last item: how the job ended, its files' contents (tokens, thumbnail) and their checks; a
    failure's type name and text (the error itself stays here, its traceback in this actor's log)."""
    fields: dict[str, Any] = {"status": status, "message": message[:MAX_MESSAGE_CHARS], "files": None}
    fields["error"] = None
    if error is not None:
        fields["error"] = {
            "type": type(error).__name__,
            "message": str(error)[:MAX_MESSAGE_CHARS],
            "value_error": isinstance(error, ValueError),  # a refusal: the engine shows its text alone
        }
    blobs = {}
    if files is not None:
        from pydantic import TypeAdapter

        from engine.generation.job import JobResult

        fields["files"] = {
            "result": TypeAdapter(JobResult).dump_python(files.result, mode="json"),
            "record": files.record,
            "video_sha256": files.video_sha256,
            "video_size": files.video_size,
        }
        blobs = {"tokens": files.tokens, "thumbnail": files.thumbnail}
    return pack("outcome", fields, blobs)


_DONE = object()


def scratch_owner(folder: Path) -> int | None:
    """The pid of the actor a scratch folder (SCRATCH_PREFIX<pid>-...) belongs to; None: not one."""
    pid, dash, _ = folder.name.removeprefix(SCRATCH_PREFIX).partition("-")
    if not folder.name.startswith(SCRATCH_PREFIX) or not dash or not pid.isdigit():
        return None
    return int(pid)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def sweep_scratch(root: Path, dead_only: bool = True, pid: int | None = None) -> list[Path]:
    """Remove this user's job scratch folders under `root` whose actor process is gone (`dead_only`), or
    those of actor `pid`. Returns those removed."""
    removed: list[Path] = []
    try:
        folders = list(root.glob(f"{SCRATCH_PREFIX}*"))
    except OSError:
        return removed
    for folder in folders:
        owner = scratch_owner(folder)
        if owner is None or (pid is not None and owner != pid):
            continue
        if dead_only and process_alive(owner):
            continue
        try:
            if folder.lstat().st_uid != os.getuid() or not folder.is_dir() or folder.is_symlink():
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def versions() -> dict[str, str]:
    """This box's landiff (the engine package it imports) and Python versions; imports no torch."""
    import platform

    import engine

    return {"landiff": engine.__version__, "python": platform.python_version()}


def weights_layout(model: str, ckpts: str | None):
    """Where `model`'s weights live on this box: the engine's --ckpts when it gave one (a path meant for
    every node), else the engine's own rules here ($LANDIFF_HOME, ./ckpts, weights/ in the data dir)."""
    from engine.weights.layout import layout_for

    return layout_for(model, None if ckpts is None else Path(ckpts))


def release_checksums(root: Path) -> dict[str, str] | None:
    """The sums a fetch checks against: LANDIFF_CHECKSUMS's list when set here, else the release's own."""
    from engine import settings
    from engine.weights.downloads import read_checksums

    configured = settings.CHECKSUMS.path()
    return None if configured is None else read_checksums(configured)


def lacking_weights(model: str, ckpts: str | None) -> list[str]:
    """The files of `model` this box must still fetch or make: missing, partly fetched or damaged (the
    release's by their state, from sizes and the verification record; none is read)."""
    from engine.specs import get_spec
    from engine.weights.downloads import file_states, planned_files
    from engine.weights.tiny import lacking_tiny_files

    root = weights_layout(model, ckpts).root
    if get_spec(model).random_weights:
        return lacking_tiny_files(root)
    states = file_states(root, planned_files(root, "all", release_checksums(root)))
    usable = ("verified", "present")
    return [state.local for state in states if not state.optional and state.state not in usable]


def weights_state(model: str, ckpts: str | None) -> str:
    """One line for the engine's log: this box's weights root and whether it has them all."""
    root = weights_layout(model, ckpts).root
    try:
        lacking = lacking_weights(model, ckpts)
    except Exception as error:  # an unreadable root, say: the first job says more
        return f"weights at {root}: not readable ({type(error).__name__})"
    if not lacking:
        return f"weights at {root}: complete"
    return f"weights at {root}: {len(lacking)} file(s) lacking, its first job fetches them"


def fetch_weights(
    model: str,
    ckpts: str | None,
    expected: str | None = None,
    only: str = "all",
    clip: bool = False,
    source: str = "huggingface",
    should_stop=None,
) -> bytes:
    """Make this box's weights of `model` complete, through the project's own means: the release's
    missing files fetched and verified (download_release), the tiny model's written (make_tiny_release).
    One at a time on a box (a lock file in the weights root): the actors of its GPUs wait for the first,
    then find the files there. `expected`: the landiff version of whoever asks; another one here refuses,
    fetching nothing. Returns a JSON report (plain types): ip, landiff, root, outcome (ready, fetched,
    generated, refused or failed), fetched, written, kept (counts), failed ({file: why}), error."""
    import ray

    from engine.specs import get_spec

    report: dict[str, Any] = {"ip": ray.util.get_node_ip_address(), **versions(), "root": "", "outcome": ""}
    report.update(fetched=0, written=0, kept=0, failed={}, error="")
    try:
        if expected is not None and expected != report["landiff"]:
            report.update(outcome="refused", error=f"landiff {report['landiff']} here, {expected} asked")
            return json.dumps(report).encode()
        spec = get_spec(model)
        layout = weights_layout(model, ckpts)
        root = layout.root
        report["root"] = str(root)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / FETCH_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released with the file, also if this process dies
            if spec.random_weights:
                from engine.weights.tiny import make_tiny_release

                made = make_tiny_release(layout, spec, remember=True)
                outcome = "generated" if made.written else "ready"
                report.update(outcome=outcome, written=len(made.written), kept=len(made.kept))
            else:
                from engine.weights.downloads import download_release, downloader_for

                downloader = downloader_for(source, root, should_stop=should_stop)
                _, done = download_release(downloader, only, release_checksums(root), clip)
                failed = {name: why[:MAX_REPORT_CHARS] for name, why in done.failed.items()}
                outcome = "failed" if failed else "fetched" if done.fetched else "ready"
                report.update(outcome=outcome, fetched=len(done.fetched), kept=len(done.skipped))
                report["failed"] = failed
    except Exception as error:  # the report says it; the traceback stays in this box's log
        log.exception("fetching the %s weights failed", model)
        report.update(outcome="failed", error=f"{type(error).__name__}: {error}"[:MAX_REPORT_CHARS])
    return json.dumps(report).encode()


class PipelineHost:
    """Runs jobs on one device of one box, keeping its Pipeline (and so its models) warm between them."""

    def __init__(self, model: str, ckpts: str | None, run_options: RunOptions):
        self.model, self.ckpts, self.run_options = model, ckpts, run_options
        self.pipeline: Pipeline | None = None
        self.stop = threading.Event()
        self.running: str | None = None  # the key of the job `run` runs: a cancel names it
        self.job_thread: threading.Thread | None = None
        self.gone = threading.Event()  # never set: `watch` waits on it for as long as the actor lives

    def hello(self) -> dict[str, str]:
        """The landiff and Python versions this box runs, and its address: asked first, before the heavy
        imports of `ready`, so that the engine turns away an actor of another version at once."""
        import ray

        return {**versions(), "ip": ray.util.get_node_ip_address()}

    def ready(self) -> dict[str, str]:
        """Where this actor runs: its node, its address and its device, its torch and where its weights are.
        The pipeline's code (torch, diffusers, transformers) loads here, before the actor joins the pool; its
        models load with its first job. The scratch folders of actors that died on this box (killed under a
        job) go first."""
        import ray
        import torch

        import engine.generation.pipeline  # noqa: F401

        for folder in sweep_scratch(Path(tempfile.gettempdir())):
            log.warning("removed %s, left by an actor that died", folder)
        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "device": device,
            "pid": str(os.getpid()),
            **versions(),
            "torch": str(torch.__version__),  # a str subclass: the engine takes plain str only
            "weights": weights_state(self.model, self.ckpts)[: MAX_REPORT_CHARS // 2],
        }

    def watch(self) -> None:
        """Never returns while the actor lives (its own concurrency group): the engine waits on this call,
        and Ray fails it when the actor dies, busy or idle."""
        self.gone.wait()

    def tidy(self) -> None:
        """The engine stops: the running job stops, and this actor's scratch folders go."""
        self.stop.set()
        thread = self.job_thread
        if thread is not None:
            thread.join(TIDY_WAIT_S)
        sweep_scratch(Path(tempfile.gettempdir()), dead_only=False, pid=os.getpid())

    def loaded(self) -> Loaded:
        pipeline = self.pipeline
        if pipeline is None:
            return Loaded([], 0)
        return Loaded(pipeline.loaded_models(), pipeline.weight_bytes())

    def cancel(self, key: str) -> None:
        """Stop the job `key` at its next step. A cancel that arrives late, once another job runs (it runs
        in another concurrency group, so it may overtake or trail a `run`), changes nothing."""
        if key == self.running:
            self.stop.set()

    def release(self) -> None:
        """Drop the warm models (the engine's worker released them after its idle time)."""
        self.pipeline = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def make_pipeline(self) -> Pipeline:
        from engine.generation.pipeline import Pipeline

        ckpts = None if self.ckpts is None else Path(self.ckpts)
        options = self.run_options
        return Pipeline.for_model(self.model, ckpts, memory=options.memory, dit=options.dit())

    def run(self, key: str, params: dict[str, Any], out_name: str, tokens: bytes | None = None):
        """One job, streamed as `pack` frames: progress reports, chunks and loaded models, then its outcome.

        The pipeline runs in a thread of this actor; its callbacks queue what this generator yields."""
        self.stop.clear()
        self.running = key
        scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        items: queue.Queue = queue.Queue()
        thread = threading.Thread(
            target=self._render, args=(params, scratch, out_name, tokens, items), daemon=True
        )
        self.job_thread = thread
        thread.start()
        try:
            while (item := items.get()) is not _DONE:
                yield item
        finally:  # also when the engine stops listening: the job stops, its scratch folder goes
            self.stop.set()
            self.running = None
            thread.join()
            shutil.rmtree(scratch, ignore_errors=True)

    def fetch_lacking(self, items: queue.Queue) -> None:
        """Before the pipeline loads: the weights this box lacks are fetched (made, for the tiny model),
        and the engine is told what happened (a `weights` item); a fetch that fails fails the job."""
        from engine.generation.job import JobCancelled

        if not lacking_weights(self.model, self.ckpts):
            return
        report = fetch_weights(self.model, self.ckpts, should_stop=self.stop.is_set)
        items.put(pack("weights", {"report": report.decode()}))
        said = json.loads(report)
        if said["outcome"] == "failed":
            if self.stop.is_set():
                raise JobCancelled("cancelled while its node fetched the weights")
            failed = "; ".join(f"{name}: {why}" for name, why in said["failed"].items())
            raise ValueError(f"the weights on {said['ip']} could not be fetched: {said['error'] or failed}")

    def _render(self, params, scratch: Path, out_name: str, tokens: bytes | None, items: queue.Queue) -> None:
        try:
            items.put(self._outcome(params, scratch, out_name, tokens, items))
        except BaseException as error:  # anything, so that the generator always ends
            log.exception("the job failed")
            try:
                items.put(outcome_item("failed", error=error))
            except BaseException:  # its text cannot be sent (a str() that raises): its type can
                items.put(outcome_item("failed", error=RuntimeError(type(error).__name__)))
        finally:
            items.put(_DONE)

    def _outcome(
        self, params, scratch: Path, out_name: str, tokens: bytes | None, items: queue.Queue
    ) -> bytes:
        from engine.daemon.worker import ProgressThrottle
        from engine.generation.job import JobCancelled, JobSpec

        tokens_path = None
        if tokens is not None:
            tokens_path = scratch / "given-tokens.npy"
            tokens_path.write_bytes(tokens)
        job = JobSpec.from_params(params, out=scratch / out_name, tokens=tokens_path)
        sent = [0]  # bytes of the growing video already sent
        loaded = [self.loaded()]

        def report_loaded() -> None:
            now = self.loaded()
            if now != loaded[0]:
                loaded[0] = now
                items.put(loaded_item(now))

        def on_progress(progress) -> None:
            report_loaded()
            items.put(progress_item(progress))

        def on_chunk(done) -> None:
            with open(done.partial_video, "rb") as video:
                video.seek(sent[0])
                tail = video.read()
            sent[0] += len(tail)
            items.put(chunk_item(done, tail))

        if self.pipeline is None:
            self.fetch_lacking(items)
            self.pipeline = self.make_pipeline()
        try:
            result = self.pipeline.run(
                job,
                on_progress=ProgressThrottle(on_progress),
                should_stop=self.stop.is_set,
                on_chunk=on_chunk,
            )
        except JobCancelled as cancelled:
            partial = None if cancelled.partial is None else collect(cancelled.partial)
            return outcome_item("cancelled", partial, message=str(cancelled))
        finally:
            report_loaded()
        return outcome_item("finished", collect(result))


def collect(result) -> SentFiles:
    """The files of a result on this box, read for sending."""
    digest = hashlib.sha256()
    with open(result.video, "rb") as video:
        while block := video.read(HASH_BLOCK):
            digest.update(block)
    return SentFiles(
        result=result,
        tokens=Path(result.tokens).read_bytes(),
        thumbnail=Path(result.thumbnail).read_bytes(),
        record=json.loads(Path(result.sidecar).read_text()),
        video_sha256=digest.hexdigest(),
        video_size=Path(result.video).stat().st_size,
    )
