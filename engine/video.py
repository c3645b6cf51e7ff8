"""Writing videos: uint8 frames -> mp4 through imageio-ffmpeg, never half-written."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np

from .atomic import atomic_path


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """frames [F, H, W, 3] uint8 -> `path`, encoded to a temporary name first and renamed when complete.

    imageio's defaults, as the reference uses them: libx264, yuv420p, quality 5.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    height, width = frames.shape[1:3]
    with atomic_path(path) as partial:
        writer = imageio_ffmpeg.write_frames(
            str(partial),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=5,
            macro_block_size=16,
            ffmpeg_log_level="error",
        )
        try:
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """(frames [F, H, W, 3] uint8, fps) of an mp4, decoded with imageio-ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3) for data in reader]
    return np.stack(frames), float(meta["fps"])


def write_thumbnail(frame: np.ndarray, path: Path, width: int = 320) -> Path:
    """A PNG of one frame [H, W, 3] uint8, at most `width` pixels wide."""
    from PIL import Image

    image = Image.fromarray(frame)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.BILINEAR)
    with atomic_path(path) as partial:
        image.save(partial, format="PNG")
    return path
