"""Frame interpolation: the model's frames (8 a second) -> a video of 16 or 24 a second, chunk by chunk.

The frame count rule, for a model's N frames and a factor k (fps / the model's fps):

- the finished video holds exactly N x k frames and lasts as long as the model's frames do (N / 8 s);
- model frame i is video frame i x k, unchanged (the same bytes); the k - 1 frames after it are
  interpolated towards model frame i + 1, and after the last model frame they hold it (at 8 fps the last
  frame also shows for 1/8 s);
- a long video's chunks stream: chunk 0 (n frames) adds (n - 1) x k + 1 video frames, ending on its
  last model frame; each later chunk (n frames) is interpolated together with the previous chunk's last
  model frame, so the step across the chunk boundary is interpolated too, and adds n x k frames; the
  last chunk adds the k - 1 held frames as well (`ChunkInterpolator.finish` does for a video cut short).
  At every split, the total is the same N x k.

`Interpolator` is the seam: a method turns n >= 2 frames into (n - 1) x k + 1. ffmpeg's motion-compensated
`minterpolate` is the one we ship: it needs no weights, runs the same on every machine, no GPU; a learned
(RIFE-class) one would implement `between` too and be chosen by name.
"""

from __future__ import annotations

import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from engine.generation.video import Mp4Point, StreamingMp4Writer

# model frames before a chunk that it is interpolated with: the previous chunk's last, so the step across
# the boundary is interpolated from the frames on both sides. More would not make a chunked video equal one
# pass over all frames: minterpolate predicts each frame's motion from the motion found before it (measured:
# the same output with 1, 2 or 3), so after a boundary the in-between frames differ slightly from one pass's.
CONTEXT = 1
# minterpolate writes output only while it holds two input frames ahead, and flushes nothing at the end:
# the last frame is fed this many extra times (see FfmpegMinterpolate.between)
LOOKAHEAD = 2


class Interpolator(ABC):
    """Makes (n - 1) x factor + 1 frames of n >= 2: the given frames at every factor-th place, new ones
    between. Subclasses name their method (recorded in the video's sidecar) and their settings."""

    method = ""

    @abstractmethod
    def between(self, frames: np.ndarray, factor: int) -> np.ndarray: ...

    def settings(self) -> dict[str, Any]:
        return {}


@dataclass
class FfmpegMinterpolate(Interpolator):
    """ffmpeg's `minterpolate` in motion-compensated mode, through imageio-ffmpeg's bundled ffmpeg: one
    process a call, frames in and out as raw RGB through its pipes (no shell, no files).

    Adaptive overlapped block motion compensation, bidirectional motion estimation (EPZS search), variable
    block sizes from 16 pixels down; scene-change detection on (at a cut the frame before it is repeated,
    nothing is blended across). Motion is estimated in full-resolution YUV 4:4:4, so colour is not
    subsampled before the encoder does it."""

    mc_mode: str = "aobmc"
    me_mode: str = "bidir"
    vsbmc: int = 1
    method = "ffmpeg-minterpolate-mci"

    def settings(self) -> dict[str, Any]:
        return {"mi_mode": "mci", "mc_mode": self.mc_mode, "me_mode": self.me_mode, "vsbmc": self.vsbmc}

    def filter(self, fps: int) -> str:
        options = ":".join(f"{key}={value}" for key, value in self.settings().items())
        return f"format=yuv444p,minterpolate=fps={fps}:{options}"

    def between(self, frames: np.ndarray, factor: int) -> np.ndarray:
        check_frames(frames)
        count, height, width, _ = frames.shape
        if count < 2 or factor < 2:
            raise ValueError(f"interpolation needs 2+ frames and a factor of 2+, got {count} and {factor}")
        wanted = (count - 1) * factor + 1
        held = np.concatenate([frames, np.repeat(frames[-1:], LOOKAHEAD, axis=0)])
        # any rate works: only the ratio matters, the frames' timestamps are ours
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            "1",
            "-i",
            "pipe:0",
            "-vf",
            self.filter(factor),
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ]
        done = subprocess.run(command, input=np.ascontiguousarray(held).tobytes(), capture_output=True)
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"ffmpeg minterpolate failed ({done.returncode}): {' '.join(error[-3:])}")
        made = np.frombuffer(done.stdout, dtype=np.uint8)
        frame_bytes = height * width * 3
        if made.size % frame_bytes or made.size // frame_bytes < wanted:
            raise RuntimeError(
                f"ffmpeg minterpolate made {made.size / frame_bytes:g} frames of {count}, expected {wanted}+"
            )
        out = made[: wanted * frame_bytes].reshape(wanted, height, width, 3).copy()
        out[::factor] = frames  # the model's own frames, exactly (not through YUV and back)
        return out


def interpolation_factor(fps: int, model_fps: int) -> int:
    """How many video frames each model frame becomes; ValueError unless `fps` is a multiple of the
    model's."""
    if fps < model_fps or fps % model_fps:
        raise ValueError(f"fps must be a multiple of the model's {model_fps}, got {fps}")
    return fps // model_fps


def video_frame_count(model_frames: int, factor: int) -> int:
    """Frames of a finished video (also one cut short after some chunks) of `model_frames` frames."""
    return model_frames * factor


def streamed_frame_count(chunk_frames: list[int], factor: int, finished: bool) -> int:
    """Frames in the growing video after chunks of these many model frames (`finished`: its hold too)."""
    total = sum(chunk_frames)
    if not total:
        return 0
    return video_frame_count(total, factor) if finished else (total - 1) * factor + 1


def check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")


@dataclass
class ChunkInterpolator:
    """A video's chunks of model frames, in order -> the video frames each adds (see the module's rule)."""

    fps: int
    model_fps: int
    interpolator: Interpolator = field(default_factory=FfmpegMinterpolate)
    factor: int = field(init=False)
    seconds: float = field(init=False, default=0.0)  # spent interpolating so far
    model_frames: int = field(init=False, default=0)
    video_frames: int = field(init=False, default=0)
    held: bool = field(init=False, default=False)  # the last frame's hold is written: the video is complete
    context: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.factor = interpolation_factor(self.fps, self.model_fps)

    def push(self, frames: np.ndarray, last: bool = False) -> np.ndarray:
        """The video frames a chunk adds; `last`: the video ends with it (its last frame is held too)."""
        check_frames(frames)
        if self.held:
            raise ValueError("the video is complete: no chunk may follow the last")
        started = time.perf_counter()
        source = frames if self.context is None else np.concatenate([self.context, frames])
        skip = 0 if self.context is None else (len(self.context) - 1) * self.factor + 1
        made = self.interpolator.between(source, self.factor) if len(source) > 1 else source
        out = made[skip:]
        self.context = source[-CONTEXT:].copy()
        self.model_frames += len(frames)
        if last:
            out = np.concatenate([out, self.hold()])
        self.video_frames += len(out)
        self.seconds += time.perf_counter() - started
        return out

    def finish(self) -> np.ndarray | None:
        """The frames still owed to end the video (the last frame's hold), None when the last chunk gave
        them; after this the video holds `video_frame_count(model_frames, factor)` frames."""
        if self.held or self.context is None:
            return None
        out = self.hold()
        self.video_frames += len(out)
        return out

    def hold(self) -> np.ndarray:
        assert self.context is not None  # held after a chunk was pushed
        self.held = True
        return np.repeat(self.context[-1:], self.factor - 1, axis=0)

    def point(self) -> InterpolationPoint:
        assert self.context is not None and not self.held  # between two chunks
        return InterpolationPoint(self.model_frames, self.video_frames, self.seconds, self.context.copy())

    def resume(self, point: InterpolationPoint) -> None:
        """Continue after the chunks that `point` was taken after (by a ChunkInterpolator of this kind)."""
        check_frames(point.context)
        self.model_frames, self.video_frames, self.seconds = (
            point.model_frames,
            point.video_frames,
            point.seconds,
        )
        self.context = point.context[-CONTEXT:].copy()

    def record(self) -> dict[str, Any]:
        """What the sidecar says of the interpolation."""
        return {
            "method": self.interpolator.method,
            "factor": self.factor,
            "model_fps": self.model_fps,
            "fps": self.fps,
            "settings": self.interpolator.settings(),
            "context_frames": CONTEXT,
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True)
class InterpolationPoint:
    """A ChunkInterpolator between two chunks: its counts, and the model frames the next chunk is
    interpolated with (the previous chunk's last `CONTEXT`)."""

    model_frames: int
    video_frames: int
    seconds: float
    context: np.ndarray  # uint8 [CONTEXT, H, W, 3]


@dataclass(frozen=True)
class WriterPoint:
    """An InterpolatingWriter between two chunks (`InterpolatingWriter.point`): what resumes it exactly."""

    frames_written: int  # the model's frames
    mp4: Mp4Point
    interpolation: InterpolationPoint | None  # None at the model's fps


class InterpolatingWriter:
    """The job's growing mp4 at `fps`, fed the model's frames chunk by chunk: above the model's fps they are
    interpolated on the way (each chunk's new frames appended at once, so the file stays playable); at the
    model's fps they go straight to the writer, as they always did (no ffmpeg pass, the same bytes).

    `frames_written` and `seconds` count the model's frames, `video_frames` the file's."""

    def __init__(
        self,
        path: Path,
        fps: int,
        model_fps: int,
        interpolator: Interpolator | None = None,
        resume: WriterPoint | None = None,
    ):
        """`resume`: continue the partial file a writer of the same path and rates left at that point (it is
        cut back to it; ValueError when it is not that file)."""
        self.fps, self.model_fps = fps, model_fps
        factor = interpolation_factor(fps, model_fps)
        self.frames = (
            None if factor == 1 else ChunkInterpolator(fps, model_fps, interpolator or FfmpegMinterpolate())
        )
        if resume is not None and (resume.interpolation is None) != (self.frames is None):
            raise ValueError("the point to resume was taken at another frame rate")
        if resume is not None and self.frames is not None and resume.interpolation is not None:
            self.frames.resume(resume.interpolation)
        self.mp4 = StreamingMp4Writer(path, fps, None if resume is None else resume.mp4)
        self.partial = self.mp4.partial
        self.frames_written = 0 if resume is None else resume.frames_written

    def point(self) -> WriterPoint:
        """Where the writer stands after the chunk appended last."""
        interpolation = None if self.frames is None else self.frames.point()
        return WriterPoint(self.frames_written, self.mp4.point(), interpolation)

    @property
    def seconds(self) -> float:
        return self.frames_written / self.model_fps

    @property
    def video_frames(self) -> int:
        return self.mp4.frames_written

    def append(self, frames: np.ndarray, last: bool = False) -> np.ndarray:
        """Add a chunk of model frames (`last`: the video ends with it); returns the frames the file got."""
        video = frames if self.frames is None else self.frames.push(frames, last)
        self.mp4.append(video)
        self.frames_written += len(frames)
        return video

    def finish(self) -> Path:
        """The video ends here (also when cut short after some chunks): rename it into place."""
        owed = None if self.frames is None else self.frames.finish()
        if owed is not None:
            self.mp4.append(owed)
        return self.mp4.finish()

    def abort(self) -> None:
        self.mp4.abort()

    def close(self) -> None:
        """Stop here, leaving the partial file to be resumed."""
        self.mp4.close()

    def record(self) -> dict[str, Any] | None:
        """The sidecar's `interpolation`: None at the model's fps."""
        return None if self.frames is None else self.frames.record()
