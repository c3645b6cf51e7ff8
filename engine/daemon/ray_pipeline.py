"""The engine's side of one job on a Ray actor: `RemotePipeline` has Pipeline's `run` and replays what the
actor (engine/daemon/ray_actor.py) streams back through the engine's callbacks; the files it sends back land
beside job.out as a local job's do (VideoMirror, land). ray is imported only inside the calls.

What comes back is read by `read_item`: frames of bytes (ray_actor.pack) whose fields are checked here
(pydantic models, explicit types and bounds) before they become the engine's objects; the video is checked by
its size and SHA-256 (VideoMirror). An item of any other shape fails the job (BadItem)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from engine.atomic import partial_path, write_atomically
from engine.daemon.ray_actor import (
    MAX_HEADER_BYTES,
    BadItem,
    ChunkSent,
    Loaded,
    Outcome,
    PipelineHost,
    SentFiles,
    unpack,
)
from engine.daemon.worker import WorkerLost
from engine.protocol import ProgressReport

if TYPE_CHECKING:
    from ray.actor import ActorClass

    from engine.generation.job import ChunkDone, JobResult, JobSpec
    from engine.generation.pipeline import SemanticTokens
    from engine.generation.resume import Checkpoints

log = logging.getLogger(__name__)
WAIT_S = 0.1  # how long the engine waits on the stream before it looks at should_stop again
CANCEL_RESEND_S = 1.0  # a cancel is sent again while the job runs on (one sent before the job began is lost)


def actor_class() -> ActorClass[PipelineHost]:
    """The Ray actor of PipelineHost: one job at a time in its default group, cancel / release / tidy in a
    group of their own so that they reach it while a job runs, and `watch` (pending for the actor's life)
    in a third."""
    import ray

    groups = {"control": 1, "watch": 1}
    # ray's stubs type ray.remote(**options) with a remote function's options only, not an actor's
    remote = ray.remote(concurrency_groups=groups, max_restarts=0)
    return remote(PipelineHost)


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
        self.release = weakref.finalize(self, release_actor, actor)
        self.release.atexit = False  # at exit the actors go with the engine

    def stage2(self) -> None:
        """Nothing to have ready here: the actor loads its models when a job reaches it."""

    def close(self) -> None:
        """The worker lets go of its models: the actor drops its own (once; dropping the handle would)."""
        self.release()

    def loaded_models(self) -> list[str]:
        return list(self.loaded.models)

    def weight_bytes(self) -> int:
        return self.loaded.weight_bytes

    def run(
        self,
        job: JobSpec,
        on_progress: Callable[[ProgressReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_chunk: Callable[[ChunkDone], None] | None = None,
        tokens: SemanticTokens | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> JobResult:
        """`tokens` (stage 1 made elsewhere) travel to the actor as the job's given tokens would.
        `checkpoints` are not written: the actor renders in its own folder (its workers pass None)."""
        from engine.generation.job import JobCancelled

        given = None
        if tokens is not None:
            given = npy_bytes(tokens.codes.cpu().numpy())
        elif job.tokens is not None:
            try:
                given = job.tokens.read_bytes()
            except OSError as error:
                raise ValueError(f"--tokens {job.tokens} cannot be read: {error.strerror}") from None
        mirror = VideoMirror(job.out)
        try:
            outcome = self.follow(job, given, mirror, on_progress, should_stop, on_chunk)
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

        lost = lost_errors()
        key = uuid.uuid4().hex  # what a cancel names: this job, not the actor's next one
        cancel_sent = -math.inf
        ended = False
        try:
            stream = self.actor.run.options(num_returns="streaming").remote(
                key, job.params(), job.out.name, tokens
            )
            while True:
                stop = should_stop is not None and should_stop()
                if stop and time.monotonic() - cancel_sent > CANCEL_RESEND_S:
                    control(self.actor.cancel).remote(key)
                    cancel_sent = time.monotonic()
                ready, _ = ray.wait([stream], timeout=WAIT_S)
                if not ready:
                    continue
                try:
                    sent = ray.get(next(stream))
                except StopIteration:
                    raise WorkerLost("its Ray actor's stream ended without the job's outcome") from None
                try:
                    item = read_item(sent)
                except BadItem as error:
                    raise RuntimeError(f"{self.label} sent what the engine refuses: {error}") from None
                if isinstance(item, ProgressReport):
                    if on_progress is not None:
                        on_progress(item)
                elif isinstance(item, ChunkSent):
                    mirror.append(item.video_tail)
                    if on_chunk is not None:  # its frames are the preview only: what the engine uses of them
                        on_chunk(replace(item.done, partial_video=mirror.partial))
                elif isinstance(item, Loaded):
                    self.loaded = item
                elif isinstance(item, FetchReport):  # its node lacked weights: its first job fetched them
                    words = fetch_words(item, item.landiff)
                    log.info("worker %s, weights on its node: %s", self.label, words)
                elif isinstance(item, Outcome):
                    ended = True
                    return item
        except lost as error:
            ended = True
            with contextlib.suppress(Exception):  # one only unreachable for now must not render on, unseen
                ray.kill(self.actor, no_restart=True)
            raise WorkerLost(f"its Ray actor is gone ({first_line(error)})") from None
        except RayTaskError as error:  # the actor's own machinery failed (not the job: that is an Outcome)
            raise RuntimeError(f"on {self.label}: {first_line(error)}") from None
        finally:
            if not ended:  # the engine side failed (its disk, a callback): the actor stops the job too
                with contextlib.suppress(Exception):  # the actor went meanwhile: nothing left to stop
                    control(self.actor.cancel).remote(key)


class VideoMirror:
    """The engine's copy of the actor's growing video: the chunks' bytes appended to job.out's partial
    name (playable after every chunk), hashed as they come, renamed into place once the hash matches."""

    def __init__(self, out: Path):
        self.out, self.partial = out, partial_path(out)
        self.file: BinaryIO | None = None
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
        result = replace(files.result, video=job.out, tokens=tokens, sidecar=sidecar, thumbnail=thumbnail)
        record = dict(files.record)
        record["job"] = {**record["job"], "out": str(job.out), "tokens": none_or_str(job.tokens)}
        record.update(result.outcome().model_dump(mode="json"))  # the engine's paths, not the actor's
        record["worker"] = label
        write_record(sidecar, record)
    except BaseException:
        for path in (job.out, tokens, thumbnail):  # a video without its record is not reproducible
            path.unlink(missing_ok=True)
        raise
    return result


MAX_PREVIEW_SIDE = 8192
HEX64 = frozenset("0123456789abcdef")


class RemoteFailure(Exception):
    """A job that failed on an actor: named after the error the actor's pipeline raised (its type's name
    only; its traceback is in that actor's log)."""


FETCH_OUTCOMES = ("ready", "fetched", "generated", "refused", "failed")
FETCH_TEXTS = ("ip", "landiff", "python", "root", "outcome", "error")
FETCH_COUNTS = ("fetched", "written", "kept")
MAX_FETCH_TEXT = 1000


@dataclass(frozen=True)
class FetchReport:
    """What a node said of its weights fetch (ray_actor.fetch_weights), checked."""

    ip: str
    landiff: str
    root: str
    outcome: str
    fetched: int
    written: int
    kept: int
    failed: dict[str, str]
    error: str


def read_fetch_report(sent: object) -> FetchReport:
    """A node's fetch report (JSON bytes or text) as checked plain data; BadItem when it is not one."""
    if isinstance(sent, bytes | str) and len(sent) <= MAX_HEADER_BYTES:
        try:
            said = json.loads(sent)
        except ValueError:
            said = None
    else:
        said = None
    if not isinstance(said, dict):
        raise BadItem("a weights report that is not a JSON object")
    if not all(isinstance(said.get(key), str) and len(said[key]) <= MAX_FETCH_TEXT for key in FETCH_TEXTS):
        raise BadItem("a weights report without its texts")
    if not all(type(said.get(key)) is int and said[key] >= 0 for key in FETCH_COUNTS):
        raise BadItem("a weights report without its counts")
    failed = said.get("failed")
    if not (
        isinstance(failed, dict)
        and all(isinstance(why, str) and len(why) <= MAX_FETCH_TEXT for why in failed.values())
    ):
        raise BadItem("a weights report's failures that are not texts")
    if said["outcome"] not in FETCH_OUTCOMES:
        raise BadItem(f"a weights outcome {said['outcome'][:20]!r}")
    fields = {key: said[key] for key in (*FETCH_TEXTS, *FETCH_COUNTS) if key != "python"}
    return FetchReport(**fields, failed={str(name)[:MAX_FETCH_TEXT]: why for name, why in failed.items()})


def fetch_words(report: FetchReport, expected: str) -> str:
    """What a node's fetch did, in a few words: generated, fetched, already there, or why not."""
    if report.outcome == "refused" or report.landiff != expected:
        return f"refused: {version_words(report.landiff, expected)}"
    if report.outcome == "failed":
        reasons = report.error or "; ".join(f"{name}: {why}" for name, why in report.failed.items())
        return f"failed ({reasons[:300]}) -> {report.root}"
    if report.outcome == "generated":
        return f"generated {report.written} file(s), {report.kept} already there -> {report.root}"
    if report.outcome == "fetched":
        fetched = f"fetched {report.fetched} file(s) and verified them"
        return f"{fetched}, {report.kept} already there -> {report.root}"
    return f"ready, all {report.kept} file(s) already there -> {report.root}"


def version_words(theirs: str | None, ours: str) -> str:
    """Why a node of another landiff version is not used, and what to do."""
    said = f"landiff {theirs}" if theirs else "a landiff that does not say its version"
    return (
        f"it runs {said}, the engine {ours}: pip install landiff-tui=={ours} on that box (the same version "
        "on every box)"
    )


def read_item(sent: object) -> ProgressReport | ChunkSent | Loaded | FetchReport | Outcome:
    """One streamed item as the engine's own object, every field checked; BadItem when it is not one."""
    kind, fields, blobs = unpack(sent)
    try:
        if kind == "progress":
            return ProgressReport.model_validate(fields["report"])
        if kind == "weights":
            return read_fetch_report(fields["report"])
        if kind == "loaded":
            models, weight_bytes = fields["models"], fields["weight_bytes"]
            if not (isinstance(models, list) and all(isinstance(name, str) for name in models)):
                raise BadItem("loaded models that are not names")
            if type(weight_bytes) is not int or weight_bytes < 0:
                raise BadItem("a weight size that is not a count of bytes")
            return Loaded(models, weight_bytes)
        if kind == "chunk":
            return read_chunk(fields, blobs)
        return read_outcome(fields, blobs)
    except (KeyError, TypeError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        if isinstance(error, BadItem):
            raise
        raise BadItem(f"a {kind} item with bad fields ({first_line(error)})") from None


def read_chunk(fields: dict, blobs: dict[str, bytes]) -> ChunkSent:
    from engine.generation.job import ChunkDone
    from engine.protocol import ChunkReport, ChunkTiming

    shape = fields["preview_shape"]
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(type(side) is int and 0 < side <= MAX_PREVIEW_SIDE for side in shape[:2])
        and shape[2] == 3
    ):
        raise BadItem(f"a preview frame of shape {str(shape)[:40]}")
    preview = blobs["preview"]
    if len(preview) != shape[0] * shape[1] * 3:
        raise BadItem("a preview frame whose bytes do not match its shape")
    frames = np.frombuffer(preview, dtype=np.uint8).reshape(1, *shape).copy()
    done = ChunkDone(
        report=ChunkReport.model_validate(fields["report"]),
        timing=ChunkTiming.model_validate(fields["timing"]),
        frames=frames,
        partial_video=Path(),  # the engine's copy's, set where it is used
    )
    return ChunkSent(done, blobs["video"])


def read_outcome(fields: dict, blobs: dict[str, bytes]) -> Outcome:
    status, message, error, files = fields["status"], fields["message"], fields["error"], fields["files"]
    if status not in ("finished", "cancelled", "failed") or not isinstance(message, str):
        raise BadItem(f"an outcome {str(status)[:20]!r}")
    failure: BaseException | None = None
    if status == "failed":
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise BadItem("a failure without its error")
        name, text = error.get("type"), error["message"]
        if error.get("value_error") is True:  # a refusal: shown as a local one is, its text alone
            failure = ValueError(text)
        elif isinstance(name, str) and name.isidentifier() and len(name) <= 80:
            failure = type(name, (RemoteFailure,), {})(text)  # named as the actor's error (a name only)
        else:
            failure = RemoteFailure(text)
    sent = None
    if files is not None:
        from pydantic import TypeAdapter

        from engine.generation.job import JobResult

        digest, size, record = files["video_sha256"], files["video_size"], files["record"]
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= HEX64):
            raise BadItem("a video hash that is not a SHA-256")
        if type(size) is not int or size < 0 or not isinstance(record, dict):
            raise BadItem("a video size or record of the wrong type")
        result = TypeAdapter(JobResult).validate_python(files["result"])
        sent = SentFiles(result, blobs["tokens"], blobs["thumbnail"], record, digest, size)
    return Outcome(status, sent, message, failure)


def none_or_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def npy_bytes(codes: np.ndarray) -> bytes:
    """`codes` as the .npy file a job's given tokens are (outputs.save_tokens writes the same)."""
    buffer = io.BytesIO()
    np.save(buffer, codes)
    return buffer.getvalue()


def release_actor(actor) -> None:
    import ray

    if not ray.is_initialized():  # the engine left the cluster (it stops): its actors went with it
        return
    with contextlib.suppress(Exception):  # the actor or the connection is gone: so are its models
        control(actor.release).remote()
