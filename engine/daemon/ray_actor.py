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
"""

from __future__ import annotations

import gc
import hashlib
import logging
import pickle
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.daemon.config import RunOptions
    from engine.generation.pipeline import Pipeline

log = logging.getLogger(__name__)
HASH_BLOCK = 1 << 20


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
    error: BaseException | None = field(default=None)


_DONE = object()


class PipelineHost:
    """Runs jobs on one device of one box, keeping its Pipeline (and so its models) warm between them."""

    def __init__(self, model: str, ckpts: str | None, run_options: RunOptions):
        self.model, self.ckpts, self.run_options = model, ckpts, run_options
        self.pipeline: Pipeline | None = None
        self.stop = threading.Event()
        self.running: str | None = None  # the key of the job `run` runs: a cancel names it

    def ready(self) -> dict[str, str]:
        """Where this actor runs: its node, its address and its device. The pipeline's code (torch, diffusers,
        transformers) loads here, before the actor joins the pool; its models load with its first job."""
        import ray
        import torch

        import engine.generation.pipeline  # noqa: F401

        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(), "device": device}

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

    def release(self) -> Loaded:
        """Drop the warm models (the engine's worker released them after its idle time)."""
        self.pipeline = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.loaded()

    def make_pipeline(self) -> Pipeline:
        from engine.generation.pipeline import Pipeline

        ckpts = None if self.ckpts is None else Path(self.ckpts)
        options = self.run_options
        return Pipeline.for_model(self.model, ckpts, memory=options.memory, dit=options.dit())

    def run(self, key: str, params: dict[str, Any], out_name: str, tokens: bytes | None = None):
        """One job, streamed: progress reports, ChunkSent and Loaded items, then one Outcome.

        The pipeline runs in a thread of this actor; its callbacks queue what this generator yields."""
        self.stop.clear()
        self.running = key
        scratch = Path(tempfile.mkdtemp(prefix="landiff-ray-job-"))
        items: queue.Queue = queue.Queue()
        thread = threading.Thread(
            target=self._render, args=(params, scratch, out_name, tokens, items), daemon=True
        )
        thread.start()
        try:
            while (item := items.get()) is not _DONE:
                yield item
        finally:  # also when the engine stops listening: the job stops, its scratch folder goes
            self.stop.set()
            self.running = None
            thread.join()
            shutil.rmtree(scratch, ignore_errors=True)

    def _render(self, params, scratch: Path, out_name: str, tokens: bytes | None, items: queue.Queue) -> None:
        try:
            items.put(self._outcome(params, scratch, out_name, tokens, items))
        except BaseException as error:  # anything, so that the generator always ends
            items.put(Outcome("failed", error=sendable(error)))
        finally:
            items.put(_DONE)

    def _outcome(self, params, scratch: Path, out_name: str, tokens: bytes | None, items: queue.Queue):
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
                items.put(now)

        def on_progress(progress) -> None:
            report_loaded()
            items.put(progress)

        def on_chunk(done) -> None:
            with open(done.partial_video, "rb") as video:
                video.seek(sent[0])
                tail = video.read()
            sent[0] += len(tail)
            items.put(ChunkSent(replace(done, frames=done.preview[None].copy(), video_frames=None), tail))

        if self.pipeline is None:
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
            return Outcome("cancelled", partial, message=str(cancelled))
        finally:
            report_loaded()
        return Outcome("finished", collect(result))


def collect(result) -> SentFiles:
    """The files of a result on this box, read for sending."""
    import json

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


def sendable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (the engine re-raises it as a local failure would be),
    else a RuntimeError carrying its type and text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
