"""Resume checkpoints of long videos: written after each finished chunk of an engine job, loaded when a job
that a killed (or stopped) engine left half-made runs again, so that it continues at its next chunk and
makes the bits an uninterrupted run makes (on the CPU; a GPU's kernels may differ in their last bits).

What continuing exactly needs, and where the resumed run takes it from (the files: resume_point.py):

- the stage-1 tokens: saved (stage 1 does not run again); the prompt's T5 states are computed again;
- the random generator's state after the last finished chunk and the overlap latents the next window holds
  fixed (a RenderCursor): saved;
- the VAE decoder's causal cache: made again by decoding every finished chunk's saved latents in the same
  pieces. Saving the cache itself would be exact too, but it is two frames of activations of every causal
  conv: about 2.6 GiB a chunk for the release at 480 x 720 (bf16), against 2 MiB of latents. The re-decode
  costs one VAE decode per finished chunk, once per resume; each chunk's frames are hashed when first made
  and checked when made again, so a decoder that no longer gives the same pixels is said in the log;
- the growing mp4: cut back to the length and hash it had at the checkpoint and appended to as before (each
  chunk is encoded by its own ffmpeg run, so no encoder state crosses chunks); the interpolation's context
  frame and counts and the thumbnail (chunk 0's middle frame): saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from engine import __version__
from engine.atomic import atomic_path, partial_path
from engine.generation.cursor import RenderCursor
from engine.generation.interpolate import InterpolationPoint, WriterPoint
from engine.generation.job import JobSpec
from engine.generation.lengths import plan_length, rules_for
from engine.generation.resume_point import (
    FORMAT,
    METADATA_KEY,
    VIDEO,
    NotResumable,
    chunk_file,
    discard,
    read_record,
    resume_point,
    state_file,
)
from engine.generation.video import Mp4Point
from engine.protocol import ChunkTiming

log = logging.getLogger(__name__)


def tensor_sha256(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def frames_sha256(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def fingerprint(job: JobSpec, model: str, device_type: str) -> dict[str, Any]:
    """What a checkpoint must have been written for to be resumed by this job: the same model, job (its
    parameters, file name and given tokens), chunk plan, and kind of device (a generator's state is one
    kind's). JSON values, as the record holds them."""
    plan = plan_length(rules_for(model), job.frames, job.overlap)
    values = {
        "model": model,
        "device": device_type,
        "job": job.params(),
        "out": job.out.name,
        "tokens": None if job.tokens is None else str(job.tokens),
        "plan": asdict(plan),
    }
    return json.loads(json.dumps(values))


@dataclass
class Checkpoint:
    """A long job's state after `chunks_done` of its `chunks` chunks, loaded and checked (`load`)."""

    folder: Path  # the job's
    chunks_done: int
    chunks: int
    codes: torch.Tensor
    cursor: RenderCursor
    writer: WriterPoint
    thumbnail: np.ndarray  # chunk 0's middle frame, uint8 [H, W, 3]
    chunk_timings: list[ChunkTiming]
    timings: dict[str, float]
    stage1: dict[str, Any]
    clock: dict[str, Any]  # the job clock's denoise_s, denoise_steps and finish_s
    latents_sha256: list[str]
    frames_sha256: list[str]
    options: dict[str, Any]  # how the run that wrote it ran: dtype, DiT options, memory profile
    resumes: list[int] = field(default_factory=list)  # chunks done at each earlier resume

    def latents(self, index: int) -> torch.Tensor:
        """Chunk `index`'s saved latents, checked against their hash."""
        path = chunk_file(self.folder, index)
        latents = load_tensors(path.read_bytes())["latents"]
        if tensor_sha256(latents) != self.latents_sha256[index]:
            raise NotResumable(f"the saved latents of chunk {index + 1} changed on disk")
        return latents


@dataclass
class Checkpoints:
    """What Pipeline.run is given to checkpoint an engine job (in `folder`, the job's) after each chunk,
    and `start`, the checkpoint to continue from. `suspend` is asked when the job stops after a chunk: true
    (the engine stopping) leaves the partial video and the checkpoint for the next engine to resume, and the
    pipeline raises JobSuspended; false (a cancel) ends the job as today, its checkpoint removed."""

    folder: Path
    start: Checkpoint | None = None
    suspend: Callable[[], bool] = lambda: False


class CheckpointWriter:
    """Writes one job's checkpoints: each chunk's latents (`chunk`), then the state after it (`state`)."""

    def __init__(
        self, folder: Path, fingerprint: dict[str, Any], options: dict[str, Any], start: Checkpoint | None
    ):
        self.folder, self.fingerprint, self.options = folder, fingerprint, options
        self.latents_sha256 = [] if start is None else list(start.latents_sha256)
        self.frames_sha256 = [] if start is None else list(start.frames_sha256)
        self.resumes = [] if start is None else [*start.resumes, start.chunks_done]
        self.saved = 0 if start is None else start.chunks_done  # chunks the state on disk counts

    def chunk(self, index: int, latents: torch.Tensor, frames: np.ndarray) -> None:
        """Chunk `index`'s new latents (what the decoder was given) and the hash of the frames it made."""
        del self.latents_sha256[index:], self.frames_sha256[index:]
        latents = latents.detach().to("cpu", torch.float32).contiguous().clone()
        write_synced(chunk_file(self.folder, index), save_tensors({"latents": latents}))
        self.latents_sha256.append(tensor_sha256(latents))
        self.frames_sha256.append(frames_sha256(frames))

    def state(
        self,
        chunks_done: int,
        chunks: int,
        codes: torch.Tensor,
        cursor: RenderCursor,
        writer: WriterPoint,
        thumbnail: np.ndarray,
        record: dict[str, Any],
    ) -> None:
        """The state after `chunks_done` chunks, replacing the one before (the checkpoint's commit).
        `record`: chunk_timings, timings, stage1 and clock, as the job has them now."""
        assert cursor.generator is not None and cursor.index == chunks_done
        tensors = {
            "codes": codes.detach().cpu().to(torch.int64),
            "generator": cursor.generator.cpu(),
            "thumbnail": torch.from_numpy(np.ascontiguousarray(thumbnail)),
        }
        if cursor.prefix is not None:
            tensors["prefix"] = cursor.prefix.detach().to("cpu", torch.float32)
        interpolation = writer.interpolation
        if interpolation is not None:
            tensors["context"] = torch.from_numpy(np.ascontiguousarray(interpolation.context))
        tensors = {name: tensor.contiguous().clone() for name, tensor in tensors.items()}
        full = {
            "format": FORMAT,
            "engine_version": __version__,
            "model": self.fingerprint["model"],
            "fingerprint": self.fingerprint,
            "options": self.options,
            "chunks_done": chunks_done,
            "chunks": chunks,
            "writer": {
                "frames_written": writer.frames_written,
                "mp4": asdict(writer.mp4),
                "interpolation": None
                if interpolation is None
                else {
                    "model_frames": interpolation.model_frames,
                    "video_frames": interpolation.video_frames,
                    "seconds": interpolation.seconds,
                },
            },
            "tensors_sha256": {name: tensor_sha256(tensor) for name, tensor in tensors.items()},
            "latents_sha256": self.latents_sha256[:chunks_done],
            "frames_sha256": self.frames_sha256[:chunks_done],
            "resumes": self.resumes,
            **record,
        }
        data = save_tensors(tensors, metadata={METADATA_KEY: json.dumps(full)})
        write_synced(state_file(self.folder), data)
        self.saved = chunks_done

    def discard(self) -> None:
        discard(self.folder)


def write_synced(path: Path, data: bytes) -> None:
    """`data` to `path` atomically, on disk before it is renamed into place (a checkpoint must survive a
    power cut as the partial video it describes does)."""
    with atomic_path(path) as partial, open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def load(folder: Path, job: JobSpec, model: str, device_type: str) -> Checkpoint:
    """The job's checkpoint in its `folder`, checked: written by this engine version for this job, model,
    plan and kind of device, every tensor and chunk's latents as hashed when written, the partial video's
    first bytes as checkpointed. NotResumable says why not."""
    point = resume_point(folder)
    record = read_record(folder)
    expected = fingerprint(job, model, device_type)
    written = record.get("fingerprint") or {}
    for key, value in expected.items():
        if written.get(key) != value:
            shown = f" ({written.get(key)})" if key in ("model", "device", "out") else ""
            raise NotResumable(f"its resume checkpoint was written for another {key}{shown}")
    tensors = load_tensors(state_file(folder).read_bytes())
    hashes = record.get("tensors_sha256") or {}
    if set(tensors) != set(hashes) or any(tensor_sha256(t) != hashes[name] for name, t in tensors.items()):
        raise NotResumable("its resume checkpoint's tensors changed on disk")
    done = point.chunks_done
    latents_sha256, frames_hashes = record.get("latents_sha256"), record.get("frames_sha256")
    if not (isinstance(latents_sha256, list) and isinstance(frames_hashes, list)) or not (
        len(latents_sha256) == len(frames_hashes) == done
    ):
        raise NotResumable("its resume checkpoint does not hash every finished chunk")
    writer = writer_point(record["writer"], tensors.get("context"))
    check_video_prefix(partial_path(folder / VIDEO), writer.mp4)
    checkpoint = Checkpoint(
        folder=folder,
        chunks_done=done,
        chunks=point.chunks,
        codes=tensors["codes"],
        cursor=RenderCursor(done, tensors["generator"], tensors.get("prefix")),
        writer=writer,
        thumbnail=tensors["thumbnail"].numpy(),
        chunk_timings=[ChunkTiming.model_validate(timing) for timing in record["chunk_timings"]],
        timings={str(key): float(value) for key, value in record["timings"].items()},
        stage1=dict(record["stage1"]),
        clock=dict(record["clock"]),
        latents_sha256=[str(sha) for sha in latents_sha256],
        frames_sha256=[str(sha) for sha in frames_hashes],
        options=dict(record.get("options") or {}),
        resumes=[int(chunk) for chunk in record.get("resumes") or []],
    )
    if len(checkpoint.chunk_timings) != done:
        raise NotResumable("its resume checkpoint does not time every finished chunk")
    for index in range(done):
        checkpoint.latents(index)
    return checkpoint


def writer_point(record: dict[str, Any], context: torch.Tensor | None) -> WriterPoint:
    mp4 = Mp4Point(**record["mp4"])
    interpolated = record["interpolation"]
    interpolation = None
    if interpolated is not None:
        if context is None:
            raise NotResumable("its resume checkpoint lacks the interpolation's context frame")
        interpolation = InterpolationPoint(
            int(interpolated["model_frames"]),
            int(interpolated["video_frames"]),
            float(interpolated["seconds"]),
            context.numpy(),
        )
    return WriterPoint(int(record["frames_written"]), mp4, interpolation)


def check_video_prefix(path: Path, point: Mp4Point) -> None:
    digest, left = hashlib.sha256(), point.size
    with open(path, "rb") as file:
        while left:
            block = file.read(min(left, 2**20))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    if left or digest.hexdigest() != point.sha256:
        raise NotResumable("its partial video is not the one checkpointed")


def load_or_none(folder: Path, job: JobSpec, model: str, device_type: str, label: str) -> Checkpoint | None:
    """`load`, or None when there is no checkpoint or it does not fit (it is removed then, and the log says
    why: the job starts from its first chunk). `label` names the job in the log."""
    if not state_file(folder).is_file():
        return None
    try:
        return load(folder, job, model, device_type)
    except Exception as error:  # a checkpoint that does not fit is never the job's failure
        why = str(error) if isinstance(error, NotResumable) else f"{type(error).__name__}: {error}"
        log.warning("%s: not resumed, starting from its first chunk: %s", label, why)
        discard(folder)
        return None
