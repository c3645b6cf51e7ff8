"""Writing videos: uint8 frames -> mp4 through imageio-ffmpeg, never half-written."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from engine.atomic import atomic_path, partial_path


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """frames [F, H, W, 3] uint8 -> `path`, encoded to a temporary name first and renamed when complete.

    imageio's defaults, as the reference uses them: libx264, yuv420p, quality 5.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    with atomic_path(path) as partial:
        encode_x264(frames, partial, fps)
    return path


def encode_x264(frames: np.ndarray, path: Path, fps: int, output_params: list[str] | None = None) -> None:
    """frames [F, H, W, 3] uint8 -> an H.264 mp4 at `path` with the one-clip settings."""
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=5,
        macro_block_size=16,
        ffmpeg_log_level="error",
        output_params=output_params,
    )
    try:
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


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


# A growing video: each chunk's frames are encoded by their own ffmpeg run into a fragmented MP4, whose
# fragments (moof + mdat) are appended to one file with their sequence numbers and decode times moved on.
# The file is a valid, playable fragmented MP4 after every chunk and is renamed into place at the end.
FRAGMENT_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int, int]]:
    """(type, offset, size, header size) of the ISO-BMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    found, offset = [], start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8 : offset + 16])[0], 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise ValueError(f"malformed MP4 box {kind!r} at byte {offset}")
        found.append((kind.decode("latin-1"), offset, size, header))
        offset += size
    return found


def _child(data: bytes, parent: tuple[str, int, int, int], kind: str) -> tuple[str, int, int, int]:
    _, offset, size, header = parent
    for box in _boxes(data, offset + header, offset + size):
        if box[0] == kind:
            return box
    raise ValueError(f"MP4 box {parent[0]} has no {kind}")


@dataclass(frozen=True)
class Mp4Point:
    """Where a growing video stands between two chunks: its first `size` bytes (their SHA-256) hold
    `frames` frames, and the next fragment continues the numbering. A writer resumed here cuts the file
    back to `size` (a chunk half-appended after it goes) and appends the same bytes a writer that never
    stopped would: each chunk is encoded by its own ffmpeg run, so no encoder state crosses chunks."""

    size: int
    sha256: str
    frames: int
    next_sequence: int
    next_time: int
    ticks_per_frame: int


class StreamingMp4Writer:
    """Appends chunks of uint8 frames [F, H, W, 3] to `.name.partial.mp4` beside `path`.

    `finish()` renames it to `path`; `abort()` removes it; `close()` leaves it to be resumed (`resume`: an
    `Mp4Point` of that file). The encoder settings are write_mp4's (imageio's defaults: libx264, yuv420p,
    quality 5); every chunk starts with a key frame.
    """

    def __init__(self, path: Path, fps: int, resume: Mp4Point | None = None):
        self.path, self.fps = path, fps
        self.partial = partial_path(path)
        self.frames_written = 0
        self.header: bytes | None = None
        self.next_sequence = 1
        self.next_time = 0  # in the track's timescale
        self.ticks_per_frame = 0
        self.size = 0
        self.digest = hashlib.sha256()  # of the file's bytes so far
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.file = self._reopen(resume)
        else:
            self.file = open(self.partial, "wb")  # noqa: SIM115 - closed by finish(), abort() or close()

    def _reopen(self, point: Mp4Point):
        """The partial file cut back to `point`, checked against its hash; ValueError when it does not fit."""
        file = open(self.partial, "r+b")  # noqa: SIM115 - closed by finish(), abort() or close()
        try:
            prefix = file.read(point.size)
            if len(prefix) != point.size or hashlib.sha256(prefix).hexdigest() != point.sha256:
                raise ValueError(f"{self.partial.name} does not begin with the {point.size} bytes it had")
            boxes = _boxes(prefix)
            if [box[0] for box in boxes[:2]] != ["ftyp", "moov"]:
                raise ValueError(f"{self.partial.name} does not begin with an MP4 stream header")
            file.truncate(point.size)
            file.seek(point.size)
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            file.close()
            raise
        self.header = prefix[: boxes[1][1] + boxes[1][2]]
        self.digest.update(prefix)
        self.size, self.frames_written = point.size, point.frames
        self.next_sequence, self.next_time = point.next_sequence, point.next_time
        self.ticks_per_frame = point.ticks_per_frame
        return file

    def point(self) -> Mp4Point:
        """Where the file stands now (after the last chunk appended)."""
        return Mp4Point(
            self.size,
            self.digest.hexdigest(),
            self.frames_written,
            self.next_sequence,
            self.next_time,
            self.ticks_per_frame,
        )

    @property
    def seconds(self) -> float:
        return self.frames_written / self.fps

    def append(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
            raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        data = self._encode(frames)
        boxes = _boxes(data)
        kinds = [box[0] for box in boxes]
        if kinds[:2] != ["ftyp", "moov"] or "moof" not in kinds:
            raise ValueError(f"ffmpeg wrote no fragmented MP4 (boxes {kinds})")
        header = data[: boxes[1][1] + boxes[1][2]]
        if self.header is None:
            self.header = header
            self.ticks_per_frame = self._timescale(data, boxes[1]) // self.fps
            self._write(header)
        elif header != self.header:
            raise ValueError("a chunk was encoded with a different stream header than the first")
        out = bytearray()
        for index, box in enumerate(boxes):
            kind, offset, size, _ = box
            if kind == "moof":
                moof = bytearray(data[offset : offset + size])
                self._renumber(moof)
                out += moof
                following = boxes[index + 1] if index + 1 < len(boxes) else None
                if following is None or following[0] != "mdat":
                    raise ValueError("an MP4 fragment without its media data")
                out += data[following[1] : following[1] + following[2]]
        self._write(bytes(out))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.frames_written += len(frames)
        self.next_time += len(frames) * self.ticks_per_frame

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def _encode(self, frames: np.ndarray) -> bytes:
        scratch = self.partial.with_name(f".{self.path.name}.chunk.mp4")
        try:
            encode_x264(frames, scratch, self.fps, ["-movflags", FRAGMENT_FLAGS])
            return scratch.read_bytes()
        finally:
            scratch.unlink(missing_ok=True)

    @staticmethod
    def _timescale(data: bytes, moov: tuple[str, int, int, int]) -> int:
        mdhd = _child(data, _child(data, _child(data, moov, "trak"), "mdia"), "mdhd")
        body = mdhd[1] + mdhd[3]
        version = data[body]
        field = body + (20 if version == 1 else 12)
        return struct.unpack(">I", data[field : field + 4])[0]

    def _renumber(self, moof: bytearray) -> None:
        """Move this fragment's sequence number and base decode time after what is already written."""
        data = bytes(moof)
        root = ("moof", 0, len(moof), 8)
        mfhd = _child(data, root, "mfhd")
        at = mfhd[1] + mfhd[3] + 4
        struct.pack_into(">I", moof, at, self.next_sequence)
        self.next_sequence += 1
        for traf in (box for box in _boxes(data, 8, len(data)) if box[0] == "traf"):
            tfdt = _child(data, traf, "tfdt")
            body = tfdt[1] + tfdt[3]
            if data[body] == 1:
                (time,) = struct.unpack(">Q", data[body + 4 : body + 12])
                struct.pack_into(">Q", moof, body + 4, time + self.next_time)
            else:
                (time,) = struct.unpack(">I", data[body + 4 : body + 8])
                struct.pack_into(">I", moof, body + 4, time + self.next_time)

    def finish(self) -> Path:
        """Close and rename the file into place; it must hold at least one chunk."""
        self.file.close()
        if not self.frames_written:
            self.partial.unlink(missing_ok=True)
            raise ValueError("no frames were written")
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the file and leave it where it is, to be resumed."""
        self.file.close()
