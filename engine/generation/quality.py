"""How good a finished video looks, without a reference video: CLIP score, flicker, motion.

- CLIP score: 100 x the cosine between CLIP's embedding of a frame and of the prompt (the prompt cut to
  CLIP's 77 tokens). At most `CLIP_MAX_FRAMES` frames are scored, evenly spaced from the first to the
  last; every frame when the video has no more. Higher is closer to the prompt; ViT-B/32 gives roughly
  20-35 for natural images and their captions. A tiny random CLIP gives numbers that mean nothing.
- Flicker: how far each frame's mean brightness (BT.601 luma, 8-bit levels 0-255) departs from the mean
  of its two neighbours' brightness, averaged over the frames that have both neighbours. A steady fade
  or a static clip gives 0; a clip whose brightness alternates between two levels gives their distance.
- Motion: the mean absolute per-pixel change of luma (8-bit levels) between consecutive frames, on
  frames area-averaged to at most `MOTION_SIZE` pixels a side, each frame's mean brightness removed
  first (so a global brightness change is flicker, not motion). 0 for a still picture.

Frames are read back from the mp4 one at a time (a long video never sits in memory whole): each frame
leaves its brightness and a small luma picture, and the frames CLIP scores are kept whole. Two ffmpeg
runs read it (one counts its frames, one streams them as RGB), each bounded in time (`ffmpeg_bound_s`)
and killed with its process group when the bound passes or the engine stops; only a regular file is
given to them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.weights.layout import CLIP_FILES

CLIP_MAX_FRAMES = 32
MOTION_SIZE = 64
CLIP_BATCH = 16
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # BT.601


def luma(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] (or [H, W, 3]) -> float luma [T, H, W] in 8-bit levels."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32)
    return frames.to(torch.float32) @ weights


def small_luma(frames: torch.Tensor, size: int = MOTION_SIZE) -> torch.Tensor:
    """Luma [T, H, W] area-averaged so that its longer side is at most `size` pixels."""
    y = luma(frames)
    height, width = y.shape[-2:]
    scale = min(1.0, size / max(height, width))
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    if target == (height, width):
        return y
    return F.interpolate(y[:, None], size=target, mode="area")[:, 0]


def flicker(brightness: torch.Tensor) -> float:
    """Mean |b[t] - (b[t-1] + b[t+1]) / 2| over frames with two neighbours, in luma levels (0 for < 3)."""
    if brightness.numel() < 3:
        return 0.0
    departure = brightness[1:-1] - (brightness[:-2] + brightness[2:]) / 2
    return float(departure.abs().mean())


def motion(small: torch.Tensor) -> float:
    """Mean |change| per pixel between consecutive small luma frames, each frame's mean removed."""
    if small.shape[0] < 2:
        return 0.0
    centred = small - small.mean(dim=(1, 2), keepdim=True)
    return float((centred[1:] - centred[:-1]).abs().mean())


def measure(frames: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Flicker and motion of frames held in memory (uint8 [T, H, W, 3])."""
    frames = torch.as_tensor(frames)
    return {"flicker": flicker(luma(frames).mean(dim=(1, 2))), "motion": motion(small_luma(frames))}


def sampled_indices(count: int, most: int = CLIP_MAX_FRAMES) -> list[int]:
    """Up to `most` frame indices, evenly spaced from the first frame to the last."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


# CLIP


@dataclass
class Clip:
    """A CLIP model with what it needs to read a prompt and a frame."""

    model: Any  # transformers.CLIPModel, on the CPU, eval mode
    tokenizer: Any  # transformers.CLIPTokenizer
    resize: int  # shortest side after resizing
    crop: tuple[int, int]  # (height, width) of the centre crop
    mean: torch.Tensor  # [3, 1, 1]
    std: torch.Tensor
    name: str


def missing_clip_files(folder: Path) -> list[str]:
    return [name for name in CLIP_FILES if not (folder / name).is_file()]


def load_clip(folder: Path, name: str) -> Clip:
    """A CLIP folder in the Hugging Face layout (config, safetensors, tokenizer, preprocessor config),
    loaded as the T5 encoders are: the model built on the meta device, the file's tensors assigned, every
    key checked (strict). Nothing is printed (from_pretrained's progress bar would land in engine.out)."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    missing = missing_clip_files(folder)
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}")
    with torch.device("meta"):  # no random initialisation of what the file replaces
        model = CLIPModel(CLIPConfig.from_json_file(str(folder / "config.json")))
    tensors = {
        key: tensor.to(torch.float32)
        for key, tensor in load_file(str(folder / "model.safetensors")).items()
        if not key.endswith("position_ids")  # older exports keep these; they are a range, made below
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            module.register_buffer("position_ids", torch.arange(ids.shape[-1])[None], persistent=False)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise ValueError(f"{folder / 'model.safetensors'} leaves {', '.join(left[:5])} unset")
    model.eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    size, crop = config.get("size", 224), config.get("crop_size", 224)
    resize = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
    crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
    mean = torch.tensor(config["image_mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(config["image_std"], dtype=torch.float32)[:, None, None]
    return Clip(model, tokenizer, resize, crop_hw, mean, std, name)


def clip_pixels(clip: Clip, frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> CLIP's input [N, 3, h, w]: shortest side resized (bicubic), centre crop,
    normalised with the model's mean and std (what CLIP's image processor does)."""
    images = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    height, width = images.shape[-2:]
    scale = clip.resize / min(height, width)
    size = (max(clip.crop[0], round(height * scale)), max(clip.crop[1], round(width * scale)))
    images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - clip.crop[0]) // 2, (size[1] - clip.crop[1]) // 2
    images = images[:, :, top : top + clip.crop[0], left : left + clip.crop[1]].clamp(0, 1)
    return (images - clip.mean) / clip.std


@torch.inference_mode()
def clip_scores(clip: Clip, frames: torch.Tensor, prompt: str) -> tuple[list[float], int, bool]:
    """100 x cos(frame, prompt) for each of uint8 [N, H, W, 3]; with the prompt's CLIP token count and
    whether it was cut to the model's length."""
    limit = clip.model.config.text_config.max_position_embeddings
    # one token more than the model reads tells whether the prompt is cut, without counting all of it
    cut = len(clip.tokenizer(prompt, truncation=True, max_length=limit + 1)["input_ids"]) > limit
    text = clip.tokenizer(prompt, truncation=True, max_length=limit, return_tensors="pt")
    text_embeds = embeddings(clip.model.get_text_features, **text)
    scores: list[float] = []
    for start in range(0, frames.shape[0], CLIP_BATCH):
        pixels = clip_pixels(clip, frames[start : start + CLIP_BATCH])
        image_embeds = embeddings(clip.model.get_image_features, pixel_values=pixels)
        scores += (100.0 * image_embeds @ text_embeds[0]).tolist()
    return scores, int(text["input_ids"].shape[1]), cut


def embeddings(method, **inputs) -> torch.Tensor:
    """A CLIP projection, unit length. (transformers' get_*_features returns the tensor, or, in newer
    versions, an output whose pooler_output holds it.)"""
    out = method(**inputs)
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(features.to(torch.float32), dim=-1)


# the whole probe of a video file


@dataclass
class VideoSample:
    """What the probe keeps of a video read frame by frame."""

    count: int = 0
    fps: float = 0.0
    brightness: list[float] = field(default_factory=list)
    small: list[torch.Tensor] = field(default_factory=list)
    kept_indices: list[int] = field(default_factory=list)
    kept: list[torch.Tensor] = field(default_factory=list)


class ProbeStopped(Exception):
    """The engine is stopping: the probe left its video unmeasured (it is measured at the next start)."""


# Every ffmpeg the probe starts runs in a process group of its own, is read without ever blocking for
# longer than FFMPEG_POLL_S, and is killed with its group when its time bound passes, when `should_stop()`
# says so (the engine stops) or when the probe leaves it early for any other reason: none outlives the
# read that started it. The bound grows with the video; a free core needs a small fraction of it.
# ffmpeg's start and a short clip's decode, at nice 19 (the probe's priority, which ffmpeg inherits) on a
# machine whose every core a job keeps busy: a free core needs well under a second for it
FFMPEG_START_S = 60.0
# decoding one MiB of H.264 (seconds of the engine's video): a free core takes a fraction of a second;
# this leaves room for a hundred times less CPU while a job runs beside the probe
FFMPEG_S_PER_MIB = 30.0
# the reading pass is paced by the probe's own work on each frame (its luma, a small picture, a copy
# for CLIP): a few milliseconds a frame on a free core, at most a few hundred behind a job
FFMPEG_S_PER_FRAME = 0.5
FFMPEG_POLL_S = 0.1  # how soon a waiting probe sees the engine stop or a bound pass
FFMPEG_LOG_KEEP = 64 * 1024  # of ffmpeg's stderr, the first and the last this many bytes are kept
READ_BYTES = 1 << 20


class NotARegularFile(ValueError):
    """A video path that names a FIFO, a device, a socket or a directory (itself or through a symlink):
    refused before any process opens it (ffmpeg would wait for ever on a FIFO without a writer)."""


class FfmpegTimeout(TimeoutError):
    """An ffmpeg the probe started outlived its bound: it was killed with its process group."""


def ffmpeg_bound_s(size: int, frames: int = 0) -> float:
    """How long an ffmpeg may take on a video of `size` bytes, `frames` frames of which the probe reads."""
    return FFMPEG_START_S + FFMPEG_S_PER_MIB * size / 2**20 + FFMPEG_S_PER_FRAME * frames


def file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISDIR: "a directory",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "not a file")


def open_regular(path: Path) -> tuple[int, int]:
    """(a read-only descriptor of `path`, its size), or NotARegularFile when `path` is anything else than
    a regular file (a symlink is followed: one to a FIFO is a FIFO). The kind is checked before the file is
    opened (opening a device may act), and again on the descriptor (the path may have changed between)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise NotARegularFile(f"{path} is not a regular file ({file_kind(status.st_mode)}): not measured")
    # O_NONBLOCK: were it swapped for a FIFO meanwhile, the open still returns at once
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (status.st_dev, status.st_ino):
        os.close(fd)
        raise NotARegularFile(f"{path} is not a regular file (it changed while opened): not measured")
    os.set_blocking(fd, True)
    return fd, opened.st_size


def ffmpeg_input(fd: int, path: Path) -> str:
    """What ffmpeg opens: the descriptor checked by open_regular (no second look-up of the path), or,
    without /dev/fd, the path, as a file (never read as a protocol: "concat:", "http:")."""
    return f"/dev/fd/{fd}" if os.path.isdir("/dev/fd") else f"file:{path}"


class BoundedFfmpeg:
    """One ffmpeg run on a descriptor open_regular gave: its stdout read on demand, its stderr kept (the
    head and the tail), both read through a selector that never waits past FFMPEG_POLL_S. Raises
    ProbeStopped when `should_stop()` says so and FfmpegTimeout past `bound_s`, the process killed with its
    group first; `close()` (the context's exit) kills it too when it is still running."""

    def __init__(
        self,
        arguments: list[str],
        source: int,
        bound_s: float,
        what: str,
        should_stop: Callable[[], bool] | None = None,
    ):
        import imageio_ffmpeg

        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", *arguments]
        self.bound_s, self.what = bound_s, what
        self.should_stop = should_stop or (lambda: False)
        self.deadline = time.monotonic() + bound_s
        self.output, self.log, self.log_cut = bytearray(), bytearray(), False
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(source,),
            start_new_session=True,  # its own process group: killed whole, never left to run on
        )
        self.closed = False
        self.selector = selectors.DefaultSelector()
        try:
            for pipe in (self.process.stdout, self.process.stderr):
                assert pipe is not None
                os.set_blocking(pipe.fileno(), False)
                self.selector.register(pipe, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BoundedFfmpeg:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self) -> float:
        """The seconds left to it; ProbeStopped or FfmpegTimeout (it killed first) when none are."""
        if self.should_stop():
            self.close()
            raise ProbeStopped(self.what)
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.close()
            raise FfmpegTimeout(f"ffmpeg took over {self.bound_s:.0f} s {self.what}: killed")
        return left

    def pump(self) -> None:
        """Take what ffmpeg wrote within FFMPEG_POLL_S (less when its time is nearly up)."""
        for key, _ in self.selector.select(min(FFMPEG_POLL_S, self.check())):
            try:
                data = os.read(key.fd, READ_BYTES)
            except BlockingIOError:
                continue
            if not data:
                self.selector.unregister(key.fileobj)
            elif key.fileobj is self.process.stdout:
                self.output += data
            else:
                self.log += data
                if len(self.log) > 2 * FFMPEG_LOG_KEEP:
                    del self.log[FFMPEG_LOG_KEEP:-FFMPEG_LOG_KEEP]
                    self.log_cut = True

    def open_pipes(self) -> bool:
        return bool(self.selector.get_map())

    def read(self, size: int) -> bytes:
        """The next `size` bytes of its output; fewer only at its end."""
        self.check()
        while len(self.output) < size and self.open_pipes():
            self.pump()
        data = bytes(self.output[:size])
        del self.output[:size]
        return data

    def wait(self) -> int:
        """Its exit status, once its output is all read and it has exited."""
        while self.open_pipes():
            self.pump()
        while True:
            try:
                return self.process.wait(min(FFMPEG_POLL_S, self.check()))
            except subprocess.TimeoutExpired:
                continue

    def log_text(self) -> str:
        text = self.log.decode(errors="replace")
        if self.log_cut:
            middle = len(self.log[:FFMPEG_LOG_KEEP].decode(errors="replace"))
            text = f"{text[:middle]}\n[...]\n{text[middle:]}"
        return text

    def failure(self, code: int) -> RuntimeError:
        last = " / ".join(line.strip() for line in self.log_text().splitlines()[-3:] if line.strip())
        return RuntimeError(f"ffmpeg failed {self.what} (exit status {code}): {last}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.selector.close()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@dataclass
class VideoStream:
    frames: int
    width: int
    height: int
    fps: float


def count_frames(path: Path, source: int, size: int, should_stop: Callable[[], bool] | None) -> VideoStream:
    """The first pass: ffmpeg decodes the video stream to nowhere and says its frame count, its size and
    its rate."""
    os.lseek(source, 0, os.SEEK_SET)
    arguments = ["-noautorotate", "-i", ffmpeg_input(source, path), "-map", "0:v:0", "-f", "null", "-"]
    what = f"counting the frames of {path} ({size / 2**20:.1f} MiB)"
    with BoundedFfmpeg(arguments, source, ffmpeg_bound_s(size), what, should_stop) as ffmpeg:
        code = ffmpeg.wait()
        if code != 0:
            raise ffmpeg.failure(code)
        log = ffmpeg.log_text()
    counts = re.findall(r"frame=\s*(\d+)", log)
    stream = re.search(r"Stream #\d+:\d+\S*: Video: (.*)", log)
    shape = stream and re.search(r",\s(\d+)x(\d+)(?=[\s,]|$)", stream.group(1))
    if not counts or not shape:
        raise ValueError(f"ffmpeg found no video stream in {path}")
    assert stream is not None
    rate = re.search(r"([\d.]+)\s+fps\b", stream.group(1))
    width, height = int(shape.group(1)), int(shape.group(2))
    return VideoStream(int(counts[-1]), width, height, float(rate.group(1)) if rate else 0.0)


def read_for_probe(
    path: Path, most: int = CLIP_MAX_FRAMES, should_stop: Callable[[], bool] | None = None
) -> VideoSample:
    """Stream a video through ffmpeg: each frame's brightness and small luma, the sampled frames. Only a
    regular file is opened (NotARegularFile); each ffmpeg run is bounded (FfmpegTimeout) and stops with
    the engine (ProbeStopped)."""
    source, size = open_regular(path)
    try:
        stream = count_frames(path, source, size, should_stop)
        wanted = set(sampled_indices(stream.frames, most))
        sample = VideoSample(fps=stream.fps)
        frame_bytes = stream.width * stream.height * 3
        os.lseek(source, 0, os.SEEK_SET)
        arguments = ["-loglevel", "error", "-noautorotate", "-i", ffmpeg_input(source, path)]
        arguments += ["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        bound = ffmpeg_bound_s(size, stream.frames)
        what = f"reading the {stream.frames} frames of {path} ({size / 2**20:.1f} MiB)"
        with BoundedFfmpeg(arguments, source, bound, what, should_stop) as ffmpeg:
            while data := ffmpeg.read(frame_bytes):
                if len(data) < frame_bytes:
                    raise ValueError(f"{path}: ffmpeg's frames end in the middle of frame {sample.count}")
                shape = (1, stream.height, stream.width, 3)
                frame = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).reshape(shape).copy())
                sample.brightness.append(float(luma(frame).mean()))
                sample.small.append(small_luma(frame)[0])
                if sample.count in wanted:
                    sample.kept_indices.append(sample.count)
                    sample.kept.append(frame[0])
                sample.count += 1
            code = ffmpeg.wait()
            if code != 0:
                raise ffmpeg.failure(code)
    finally:
        os.close(source)
    return sample


def probe_video(
    path: Path,
    prompt: str,
    clip: Clip | None,
    skipped: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The quality record of one video (see protocol.QualityRecord). `clip` None: CLIP is skipped, for
    the reason `skipped`; flicker and motion need no weights and are measured all the same. Raises
    ProbeStopped as soon as `should_stop()` says so while the video is read."""
    started = time.monotonic()
    sample = read_for_probe(path, should_stop=should_stop)
    if sample.count == 0:
        raise ValueError(f"{path} holds no frames")
    record: dict[str, Any] = {
        "frames": sample.count,
        "fps": sample.fps,
        "flicker": round(flicker(torch.tensor(sample.brightness)), 4),
        "motion": round(motion(torch.stack(sample.small)), 4),
        "clip": None,
        "skipped": skipped if clip is None else None,
        "error": None,
    }
    if clip is not None:
        scores, tokens, truncated = clip_scores(clip, torch.stack(sample.kept), prompt)
        record["clip"] = {
            "model": clip.name,
            "mean": round(sum(scores) / len(scores), 4),
            "min": round(min(scores), 4),
            "frames": sample.kept_indices,
            "scores": [round(score, 4) for score in scores],
            "prompt_tokens": tokens,
            "prompt_truncated": truncated,
        }
    record["seconds"] = round(time.monotonic() - started, 3)
    if not all(math.isfinite(record[key]) for key in ("flicker", "motion")):
        raise ValueError(f"{path}: flicker or motion is not a number")
    return record
