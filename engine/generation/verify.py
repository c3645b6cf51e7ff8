"""Reproducibility: what a job's record keeps of where it ran, and `verify`, which makes its tokens (and its
frames) again from the record and compares their hashes with the recorded ones.

The record (Pipeline.sidecar_record) holds, besides the job's parameters, run options and weights' hashes,
what engine/generation/run_record.py makes of where it ran and what it made:

- `environment`: python, torch, CUDA runtime, cuDNN, GPU, driver, numpy, diffusers and transformers
  versions, the CPU's vector ISA and threads, the deterministic and TF32 flags;
- `hashes`: `tokens_sha256`, the SHA-256 of the semantic tokens as little-endian int64 (the .npy's array,
  not its file), and `frames_sha256`, one SHA-256 per chunk of the model's uint8 frames [n, H, W, 3] as the
  VAE made them: before interpolation and the mp4's encoding, which need not be bit-stable across ffmpeg
  builds (resume.frames_sha256, as a resume checkpoint hashes them).

`verify_record` runs in the calling process (as `generate` does), not through the engine.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.generation.run_record import (
    NOT_CAUSES,
    environment,
    tokens_sha256,
)

PREDATES = (
    "this record predates verification hashes; re-run it (`landiff-engine rerun JOB`, or `generate` again) "
    "to get one"
)


@dataclass
class Check:
    """One compared hash: `outcome` match, differ or skipped (then `note` says why)."""

    what: str  # tokens, frames
    outcome: str
    recorded: str | list[str] | None = None
    now: str | list[str] | None = None
    note: str = ""


@dataclass
class Verification:
    record: str  # the record verified (its path)
    device: str
    weights: list[str] = field(default_factory=list)  # "FILE" or "FILE (why)": the files that differ
    weight_files: int = 0
    checks: list[Check] = field(default_factory=list)
    causes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (what, recorded, now) that differ

    @property
    def matched(self) -> bool:
        compared = [check for check in self.checks if check.outcome != "skipped"]
        return bool(compared) and all(check.outcome == "match" for check in compared)

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "device": self.device,
            "matched": self.matched,
            "weights_differ": self.weights,
            "checks": [asdict(check) for check in self.checks],
            "differences": [{"what": what, "recorded": was, "now": now} for what, was, now in self.causes],
        }


def load_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as a job's record ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("job"), dict) or "model" not in record:
        raise ValueError(f"{path} is not a job's record (the .json written beside its video)")
    return record


def verify_record(
    record: dict[str, Any],
    source: str,
    device: torch.device | None = None,
    full: bool = False,
    root: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Verification:
    """Make the record's tokens again (with `full`, its frames too) in this process and compare their hashes
    with the recorded ones. `device`: default the recorded one; `root`: the weights root (default the
    recorded one, when it is still there, else as the engine finds it). `say` hears each step, and each
    weights file that differs before anything runs. Refusals (an old record, absent weights, a device not
    here) raise ValueError."""
    from engine.generation.job import JobSpec
    from engine.specs import get_spec

    hashes = record.get("hashes")
    if not isinstance(hashes, dict) or "tokens_sha256" not in hashes:
        raise ValueError(PREDATES)
    spec = get_spec(str(record["model"]))
    layout = weights_layout(record, spec.name, root)
    given = record["job"]
    values = {key: value for key, value in given.items() if key not in ("out", "tokens")}
    tokens_file = None if given.get("tokens") is None else Path(given["tokens"])
    out_name = Path(str(given.get("out") or "video.mp4")).name
    run_device = device or recorded_device(str(record.get("device", "cpu")))
    lane = (record.get("stage1") or {}).get("device")
    stage1_device = device or (recorded_device(lane) if lane not in (None, "file") else run_device)
    verification = Verification(source, str(run_device))
    verification.weight_files, verification.weights = compare_weights(record, layout)
    for line in verification.weights:
        say(f"weights differ: {line}")
    with tempfile.TemporaryDirectory(prefix="landiff-verify-") as scratch:
        job = JobSpec.from_params(values, out=Path(scratch) / out_name, tokens=tokens_file)
        job.validate(spec)
        pipelines: dict[str, Any] = {}

        def pipeline_on(where: torch.device):
            if str(where) not in pipelines:
                pipelines[str(where)] = make_pipeline(record, spec, layout, where)
            return pipelines[str(where)]

        try:
            codes = stage1_check(verification, record, hashes, job, stage1_device, pipeline_on, say)
            if full:
                stage2_check(verification, record, hashes, job, codes, run_device, pipeline_on, say)
        finally:
            for pipeline in pipelines.values():
                pipeline.close()
        ran = pipelines.get(str(run_device)) or pipelines.get(str(stage1_device))
        verification.causes = causes(record, job, ran, run_device, stage1_device)
    return verification


def stage1_check(verification, record, hashes, job, device, pipeline_on, say) -> torch.Tensor | None:
    """The tokens' check; returns the tokens stage 2 may render from (with the recorded hash), if any."""
    from engine.generation.outputs import load_tokens

    recorded = str(hashes["tokens_sha256"])
    if job.tokens is not None:  # the job did not make its tokens: the file it was given is compared
        codes = load_tokens(job.tokens)
        now = tokens_sha256(codes)
        outcome = "match" if now == recorded else "differ"
        note = f"the job's tokens came from {job.tokens}: not made by it, the file compared"
        verification.checks.append(Check("tokens", outcome, recorded, now, note))
        return codes if outcome == "match" else None
    say(f"making the tokens again on {device} (stage 1)")
    started = time.perf_counter()
    codes = pipeline_on(device).semantic_tokens(job).codes
    now = tokens_sha256(codes)
    outcome = "match" if now == recorded else "differ"
    note = f"stage 1 on {device} in {time.perf_counter() - started:.1f} s"
    verification.checks.append(Check("tokens", outcome, recorded, now, note))
    if outcome == "match":
        return codes
    saved = record.get("tokens_path")  # the recorded tokens, to render from: stage 2 compared on its own
    if saved and Path(saved).is_file():
        kept = load_tokens(Path(saved))
        if tokens_sha256(kept) == recorded:
            return kept
    return None


def stage2_check(verification, record, hashes, job, codes, device, pipeline_on, say) -> None:
    from engine.generation.pipeline import SemanticTokens

    recorded = [str(sha) for sha in hashes.get("frames_sha256") or []]
    if not recorded:
        verification.checks.append(Check("frames", "skipped", note="the record holds no frames' hashes"))
        return
    if codes is None:
        note = "no tokens with the recorded hash to render from (neither these nor the job's .npy)"
        verification.checks.append(Check("frames", "skipped", recorded, note=note))
        return
    say(f"rendering the video again on {device} (stage 2)")
    started = time.perf_counter()
    pipeline = pipeline_on(device)
    result = pipeline.run(job, tokens=SemanticTokens(codes, {}, str(device), time.time()))
    made = json.loads(result.sidecar.read_text())["hashes"]["frames_sha256"]
    now = made[: len(recorded)]  # a cancelled job's record holds only its kept chunks
    seconds = time.perf_counter() - started
    if now == recorded:
        note = f"stage 2 on {device} in {seconds:.1f} s"
        verification.checks.append(Check("frames", "match", recorded, now, note))
        return
    first = next(index for index, (was, new) in enumerate(zip(recorded, now, strict=False)) if was != new)
    note = f"chunk {first + 1} of {len(recorded)} is the first that differs; stage 2 on {device}"
    verification.checks.append(Check("frames", "differ", recorded, now, note))


def weights_layout(record: dict[str, Any], model: str, root: Path | None):
    """The weights to run: under `root` (--ckpts), else where the job found them if they are still
    there, else where the engine finds them. Refused (ValueError) when a recorded file is absent there."""
    from engine.weights.layout import ReleaseLayout, layout_for

    recorded_root = (record.get("environment") or {}).get("weights_root")
    if root is not None:
        layout = layout_for(model, root)
    elif recorded_root and Path(recorded_root).is_dir():
        layout = ReleaseLayout(Path(recorded_root))
    else:
        layout = layout_for(model)
    recorded = record.get("weights_sha256") or {}
    absent = sorted(name for name in recorded if not (layout.root / name).is_file())
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise ValueError(
            f"the {model} weights are absent from {layout.root} ({absent[0]}{more}): verify runs the model "
            "here; `landiff-engine weights download` fetches them (`tiny` writes the tiny model's), "
            "--ckpts names another root"
        )
    return layout


def compare_weights(record: dict[str, Any], layout) -> tuple[int, list[str]]:
    """How many weight files the record hashed, and those whose SHA-256 is not the recorded one now."""
    from engine.weights.checksums import file_checksums

    recorded: dict[str, str] = record.get("weights_sha256") or {}
    now = file_checksums(layout)
    differ = [name for name, sha in recorded.items() if now.get(name) != sha]
    differ += [f"{name} (not in the record)" for name in now if name not in recorded]
    return len(recorded), differ


def recorded_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= gpu_count()):
        raise ValueError(
            f"the job ran on {name} and that GPU is not visible here: pass --device (cpu, cuda:N) to verify "
            "elsewhere (its bits will likely differ)"
        )
    return device


def gpu_count() -> int:
    return torch.cuda.device_count()


def make_pipeline(record: dict[str, Any], spec, layout, device: torch.device):
    """A pipeline run as the job's was: its dtype, memory profile and DiT options on the same kind of device
    (on another kind: that device's defaults, named among the differences)."""
    from engine.generation.pipeline import Pipeline
    from engine.generation.speed import DiTOptions

    recorded = torch.device(str(record.get("device", "cpu")))
    if recorded.type != device.type:
        return Pipeline(spec, layout, device=device)
    dit = record.get("dit") or {}
    memory = (record.get("memory") or {}).get("profile", "auto")
    dtype = getattr(torch, str(record.get("dtype")), None)
    options = DiTOptions(dit.get("attention", "auto"), dit.get("compile"), dit.get("fuse_qkv"))
    return Pipeline(
        spec,
        layout,
        device=device,
        dtype=dtype if isinstance(dtype, torch.dtype) else None,
        memory=memory,
        dit=options,
    )


def causes(
    record: dict[str, Any], job, pipeline, device: torch.device, stage1_device: torch.device
) -> list[tuple[str, Any, Any]]:
    """What differs between the record's run and this one: the likely causes of a hash that differs."""
    from engine import __version__

    pairs: list[tuple[str, Any, Any]] = [
        ("engine_version", record.get("engine_version"), __version__),
        ("device", record.get("device"), str(device)),
        ("stage1 device", (record.get("stage1") or {}).get("device"), str(stage1_device)),
        ("step_cache threshold", (record.get("step_cache") or {}).get("threshold"), job.cache),
    ]
    if pipeline is not None:
        memory, dit = pipeline.memory_choice.record(), pipeline.dit.record()
        pairs.append(("dtype", record.get("dtype"), str(pipeline.dtype).removeprefix("torch.")))
        for key in ("attention", "compile", "fuse_qkv"):
            pairs.append((f"dit {key}", (record.get("dit") or {}).get(key), dit[key]))
        for key in ("profile", "dit_weights_8bit", "vae_spatial_tiling"):
            pairs.append((f"memory {key}", (record.get("memory") or {}).get(key), memory[key]))
    recorded_env = record.get("environment")
    now_env = environment(device)
    if isinstance(recorded_env, dict):
        for key in sorted(set(recorded_env) | set(now_env)):
            if key not in NOT_CAUSES:
                pairs.append((key, recorded_env.get(key), now_env.get(key)))
    else:
        pairs.append(("environment", "not recorded", "(this run's)"))
    if job.tokens is not None and record.get("stage1", {}).get("device") == "file":
        pairs = [pair for pair in pairs if pair[0] != "stage1 device"]
    return [(what, was, now) for what, was, now in pairs if was != now]
