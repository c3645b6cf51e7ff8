"""LanDiff from Python: one object, built from a weights root and a model name, called with a prompt.

    from engine.api import LanDiff

    landiff = LanDiff.from_pretrained(model="tiny")  # model="landiff" (the default) is the release
    video = landiff("A red kite over a windy beach at dusk.", seed=7, steps=4)
    print(video.frames.shape, video.tokens.shape, video.record["timings"])
    landiff("A heron in the rain.", quality=True).record["quality"]  # CLIP score, flicker, motion

It runs the engine's own pipeline (`engine.generation.pipeline.Pipeline`), so a seed gives the frames a
job with the same parameters gives in the engine. The models load on the first call and stay loaded.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from engine.generation.job import ChunkDone, JobCancelled, JobSpec, Progress
from engine.generation.pipeline import Pipeline
from engine.generation.video_quality import measure_into_sidecar

__all__ = ["GeneratedVideo", "JobCancelled", "LanDiff", "Progress"]

# what a call may set besides the prompt: the job's parameters, not where its files go
PARAMETERS = tuple(f.name for f in fields(JobSpec) if f.name not in ("prompt", "out"))


@dataclass
class GeneratedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3], RGB: the video's, at `fps` (interpolated above the model's 8)
    tokens: np.ndarray  # int64 [N]: the semantic tokens (pass them back as `tokens=` to re-render)
    fps: int
    record: dict[str, Any]  # what the engine's JSON sidecar holds: parameters, timings, peak memory, hashes
    video_path: Path | None  # the mp4 when `out` was given, else None (nothing was kept on disk)


class LanDiff:
    """The two-stage LanDiff pipeline; see the module's docstring for an example."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    @classmethod
    def from_pretrained(
        cls,
        root: str | Path | None = None,
        model: str = "landiff",
        device: str | None = None,
        memory: str = "auto",
        attention: str = "auto",
        compile: bool | None = None,
        fuse_qkv: bool | None = None,
    ) -> LanDiff:
        """`root` is the weights root (default: as the engine finds it, `$LANDIFF_HOME`, then ./ckpts, then
        the user data dir); `model` a spec name (`landiff`, or `tiny`: random toy weights, written on first
        use); `device` a torch device name (default: CUDA when present); `memory` `auto`, `resident`,
        `balanced` or `low` (see engine.generation.memory); `attention` (auto, sdpa, cudnn, flash2,
        flash3, sage), `compile` and `fuse_qkv` (None: on with CUDA) as `landiff-engine generate` takes
        them."""
        import torch

        chosen = None if device is None else torch.device(device)
        root = None if root is None else Path(root)
        from engine.generation.speed import DiTOptions

        dit = DiTOptions(attention, compile, fuse_qkv)
        return cls(Pipeline.for_model(model, root, device=chosen, memory=memory, dit=dit))

    def __call__(
        self,
        prompt: str,
        *,
        out: str | Path | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        quality: bool = False,
        **parameters: Any,
    ) -> GeneratedVideo:
        """Generate one video. `parameters` are the job's (seed, steps, cfg, frames, ...: see `PARAMETERS`);
        `out` an .mp4 path to keep the files the engine keeps (video, tokens .npy, thumbnail, JSON record);
        `on_progress` gets every `Progress` report; `should_stop` is polled between steps and, when it
        returns True, ends the call with `JobCancelled` (its `partial` holds the finished chunks' files when
        `out` was given); `quality` measures the video as the engine's probe does (`record["quality"]`,
        also in the sidecar when `out` was given)."""
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise TypeError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
        if "tokens" in parameters and parameters["tokens"] is not None:
            parameters["tokens"] = Path(parameters["tokens"])
        pieces: list[np.ndarray] = []

        def keep_frames(done: ChunkDone) -> None:
            pieces.append(done.frames if done.video_frames is None else done.video_frames)

        with tempfile.TemporaryDirectory(prefix="landiff-") as scratch:
            target = Path(out) if out is not None else Path(scratch) / "video.mp4"
            job = JobSpec(prompt=prompt, out=target, **parameters)
            result = self.pipeline.run(
                job, on_progress=on_progress, should_stop=should_stop, on_chunk=keep_frames
            )
            if quality:
                pipeline = self.pipeline
                measure_into_sidecar(
                    result.video, result.sidecar, prompt, pipeline.layout.root, pipeline.spec.name
                )
            record = json.loads(result.sidecar.read_text())
            tokens = np.load(result.tokens)
        return GeneratedVideo(
            frames=np.concatenate(pieces),
            tokens=tokens,
            fps=result.fps,
            record=record,
            video_path=result.video if out is not None else None,
        )
