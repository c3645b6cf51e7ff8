"""Free space: what a job may write (an upper bound), whether the disk has it, and a full disk said as
such (SQLite's "database or disk is full", ENOSPC, or a video library's garbled error on a full disk)."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from engine import settings
from engine.generation.lengths import plan_length, rules_for
from engine.specs import get_spec

# An H.264 frame at the writer's quality stays far below this share of its raw RGB bytes; the partial
# video and the chunk being appended exist at once, hence 2 x.
MP4_SHARE_OF_RAW = 0.25
PREVIEW_WIDTH = 720  # the widest PNG a job writes: its chunk previews (worker.py); the thumbnail is narrower


class DiskFull(OSError):
    """Not enough free space for a job, or the disk filled while writing."""


def job_output_bound(model: str, frames: int | None, overlap: int | None, fps: int | None = None) -> int:
    """Bytes a job may write at most: its mp4 (twice, while a chunk is appended; `fps` frames a second, the
    model's by default), a PNG preview per chunk, the thumbnail, the tokens and its record, and a long
    video's resume checkpoint (every chunk's latents, float32, and the state: twice while it is replaced)."""
    spec = get_spec(model)
    per_model_frame = 1 if fps is None else max(1, fps // spec.fps)  # interpolated frames
    plan = plan_length(rules_for(model), frames, overlap)
    scale = 2 ** (spec.vae.levels - 1)
    height, width = 2 * spec.decoder.grid_height * scale, 2 * spec.decoder.grid_width * scale
    raw_frame = height * width * 3
    preview = PREVIEW_WIDTH * PREVIEW_WIDTH * 3  # a PNG never much exceeds its raw pixels
    tokens = 8 * 1024 * 1024  # int64 codes of the longest plan, with room
    video = 2 * plan.frames * per_model_frame * raw_frame * MP4_SHARE_OF_RAW
    _, channels, rows, cols = spec.latent_shape(plan.window)
    resume = 0 if plan.chunks == 1 else 4 * channels * rows * cols * (plan.latent_frames + 2 * plan.overlap)
    resume += 0 if plan.chunks == 1 else 2 * (2 * raw_frame + tokens)
    return int(video) + (plan.chunks + 1) * preview + tokens + resume


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds (or will hold) `folder`."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def reserve_bytes() -> int:
    return settings.min_free_bytes()


def check_room(folder: Path, needed: int) -> None:
    """DiskFull unless `folder`'s disk has `needed` bytes free beyond the reserve LANDIFF_MIN_FREE_MB."""
    free, reserve = free_bytes(folder), reserve_bytes()
    if free - reserve < needed:
        raise DiskFull(
            errno.ENOSPC,
            f"not enough free space in {folder}: this job may write {mebibytes(needed)} and "
            f"{mebibytes(free)} is free, of which {mebibytes(reserve)} is kept in reserve "
            f"({settings.MIN_FREE_MB.name}); free some space (delete old jobs) and re-run it",
        )


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` or any cause in its chain says the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def disk_full_message(error: BaseException, folder: Path) -> str | None:
    """ "no space left on device" and where, when `error` comes of a full disk; None otherwise. A disk with
    almost no room left counts too: video libraries report a full disk as a malformed file."""
    try:
        nearly_full = free_bytes(folder) < 1024 * 1024
    except OSError:
        nearly_full = False
    if not (is_disk_full(error) or nearly_full):
        return None
    return f"no space left on device in {folder}: free some space (delete old jobs), then re-run it"


def mebibytes(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB"
