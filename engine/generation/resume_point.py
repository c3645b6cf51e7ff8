"""A long job's resume checkpoint as files, read without torch: what a starting engine looks at to decide
whether a job a dead engine left running continues (engine/generation/resume.py writes and loads them).

The checkpoint lives in the job's folder, under `resume/`:

- `chunk-0000.safetensors`, ...: each finished chunk's new latents (what the VAE decoded of it), written
  once, atomically, before the state that counts it;
- `state.safetensors`: the state after the last checkpointed chunk (tokens, the random generator, the
  overlap latents, the thumbnail, the interpolation's context frame) and, in its header's metadata, a JSON
  record: how many chunks are done, the partial video's length and hash at that point, the job it belongs
  to, the chunks' timings. Replaced atomically after each chunk: it is the checkpoint's commit.

The partial video is appended and synced before its chunk's state is written, so the state always names
a prefix of the file (a kill mid-append leaves bytes after it, which a resume cuts off).
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import __version__
from engine.atomic import partial_path

log = logging.getLogger(__name__)

FOLDER = "resume"
STATE = "state.safetensors"
FORMAT = 1  # of the state's record; a checkpoint of another format (or engine version) is not resumed
METADATA_KEY = "resume"
MAX_HEADER_BYTES = 16 * 2**20  # a state's safetensors header (its record included) is far smaller
VIDEO = "video.mp4"  # the name an engine job's video has in its folder


class NotResumable(ValueError):
    """The checkpoint cannot be resumed; the message says why."""


def resume_folder(job_folder: Path) -> Path:
    return job_folder / FOLDER


def chunk_file(job_folder: Path, index: int) -> Path:
    return resume_folder(job_folder) / f"chunk-{index:04d}.safetensors"


def state_file(job_folder: Path) -> Path:
    return resume_folder(job_folder) / STATE


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and `__metadata__`), checked for its size."""
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) != 8:
            raise NotResumable(f"{path.name} is cut short")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise NotResumable(f"{path.name} declares a header of {size} bytes")
        text = file.read(size)
    if len(text) != size:
        raise NotResumable(f"{path.name} is cut short")
    try:
        header = json.loads(text)
    except ValueError:
        raise NotResumable(f"{path.name} has no readable header") from None
    if not isinstance(header, dict):
        raise NotResumable(f"{path.name} has no readable header")
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if path.stat().st_size != 8 + size + max(ends, default=0):
        raise NotResumable(f"{path.name} is not as long as its header says")
    return header


def read_record(job_folder: Path) -> dict[str, Any]:
    """The state's record (format, engine version and chunk count checked); NotResumable says why not."""
    path = state_file(job_folder)
    if not path.is_file():
        raise NotResumable("it has no resume checkpoint")
    try:
        metadata = read_header(path).get("__metadata__") or {}
        record = json.loads(metadata[METADATA_KEY])
    except (OSError, LookupError, TypeError, AttributeError, ValueError) as error:
        if isinstance(error, NotResumable):
            raise
        raise NotResumable(f"its resume checkpoint cannot be read ({error})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise NotResumable("its resume checkpoint is of another format")
    if record.get("engine_version") != __version__:
        written = record.get("engine_version")
        raise NotResumable(f"its resume checkpoint was written by engine {written}, this is {__version__}")
    done, chunks = record.get("chunks_done"), record.get("chunks")
    if not isinstance(done, int) or not isinstance(chunks, int) or not 0 < done < chunks:
        raise NotResumable("its resume checkpoint counts no chunk to resume after")
    return record


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint that looks resumable from its files: `chunks_done` of `chunks` are in the partial
    video."""

    chunks_done: int
    chunks: int
    model: str


def resume_point(job_folder: Path) -> ResumePoint:
    """What a starting engine checks of a job's checkpoint (torch-free): its record, its chunks' latent files
    and the partial video at least as long as the record says. NotResumable says why not. The tensors and
    the video's bytes are checked against their hashes when the job runs (engine/generation/resume.py)."""
    record = read_record(job_folder)
    done = record["chunks_done"]
    missing = [index for index in range(done) if not chunk_file(job_folder, index).is_file()]
    if missing:
        raise NotResumable(f"its resume checkpoint lacks the latents of chunk {missing[0] + 1}")
    video = partial_path(job_folder / VIDEO)
    writer = record.get("writer")
    mp4 = writer.get("mp4") if isinstance(writer, dict) else None
    size = mp4.get("size") if isinstance(mp4, dict) else None
    try:
        present = video.stat().st_size
    except OSError:
        raise NotResumable("its partial video is gone") from None
    if not isinstance(size, int) or present < size:
        raise NotResumable(f"its partial video holds {present} bytes, fewer than the {size} checkpointed")
    return ResumePoint(done, record["chunks"], str(record.get("model")))


def discard(job_folder: Path) -> None:
    """The job's checkpoint, gone (its video is finished, or it will not be resumed)."""
    shutil.rmtree(resume_folder(job_folder), ignore_errors=True)


def has_checkpoint(job_folder: Path) -> bool:
    return state_file(job_folder).is_file()
