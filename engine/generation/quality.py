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
leaves its brightness and a small luma picture, and the frames CLIP scores are kept whole.
"""

from __future__ import annotations

import json
import math
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


def read_for_probe(
    path: Path, most: int = CLIP_MAX_FRAMES, should_stop: Callable[[], bool] | None = None
) -> VideoSample:
    """Stream an mp4 with imageio-ffmpeg: each frame's brightness and small luma, the sampled frames."""
    import imageio_ffmpeg

    total, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    wanted = set(sampled_indices(total, most))
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    sample = VideoSample(fps=float(meta["fps"]))
    try:
        for index, data in enumerate(reader):
            if should_stop is not None and should_stop():
                raise ProbeStopped(str(path))
            frame = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).reshape(1, height, width, 3).copy())
            sample.brightness.append(float(luma(frame).mean()))
            sample.small.append(small_luma(frame)[0])
            if index in wanted:
                sample.kept_indices.append(index)
                sample.kept.append(frame[0])
            sample.count = index + 1
    finally:
        reader.close()
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
