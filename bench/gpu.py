"""The one GPU benchmark: every stage under every memory profile, and each attention kernel's deviation.

    python bench/gpu.py --json bench-gpu.json          # with CUDA: full size, within its 450 s budget
    python bench/gpu.py --plan                         # anywhere: what each part should cost on H100/H200
    python bench/gpu.py --budget 60                    # without CUDA: the tiny spec on the CPU, a smoke test

With CUDA it writes random full-size weights (bf16, about 27 GB) in the release's layout to the fastest
folder with room (RAM-backed /dev/shm when it fits, else the temp dir), so the engine's own loaders read
them, and hashes them once (as the engine's first job would) outside the timed jobs; runs one 49-frame job
of 10 denoising steps per memory profile (resident, balanced, low; balanced twice, for its steady-state
peak), the 50-step time extrapolated from them; calls the DiT twice with each attention kernel; prints one
table (seconds per stage, tokens/s, steps/s, peak GiB, each figure's ratio to its floor on an H200) and
writes the same as JSON, with the torch, CUDA and cuDNN versions, the SDPA backend PyTorch picked and
whether stage 1 replayed a CUDA graph. Every section records its failure and the script goes on; an
optional package that is not installed is "n/a", not a failure; a global time budget stops what would
overrun it. The weights are deleted at the end. Not a test; tests/test_bench_gpu.py runs the CPU smoke.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_plan  # noqa: E402
from common import print_rows  # noqa: E402

from engine.generation.job import JobCancelled, JobSpec  # noqa: E402
from engine.generation.memory import GiB, spec_weight_sizes  # noqa: E402
from engine.generation.pipeline import Pipeline  # noqa: E402
from engine.generation.speed import (  # noqa: E402
    ATTENTION_KERNELS,
    DiTOptions,
    MissingPackage,
    SpeedOptionError,
    attention_kernel,
)
from engine.models.control_dit import ControlDiT  # noqa: E402
from engine.models.llm import SemanticLM  # noqa: E402
from engine.models.semantic_decoder import SemanticDecoder  # noqa: E402
from engine.models.video_vae import build_vae  # noqa: E402
from engine.specs import ModelSpec, get_spec  # noqa: E402
from engine.weights.checksums import file_checksums  # noqa: E402
from engine.weights.layout import ReleaseLayout, layout_for  # noqa: E402
from engine.weights.random_weights import save_atomically, save_torch_atomically  # noqa: E402
from engine.weights.sat_keys import sat_dit_from_ours, sat_vae_decoder_from_ours  # noqa: E402
from engine.weights.tiny import sincos_table, tokenizer_training_parts  # noqa: E402
from engine.weights.tiny_text import t5_config, train_tiny_sentencepiece  # noqa: E402

PROMPT = "A red fox running through a snowy forest, cinematic lighting."
PROFILES = ("resident", "balanced", "low")
CUDA_STEPS = 10  # denoising steps of a job on CUDA: the 50-step time is extrapolated from them
BUDGET_S = 450.0
# the aten op each fused SDPA backend dispatches to; none of them: the math path (matmuls and a softmax)
SDPA_BACKENDS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
}
# Floors on one H200 (bf16 989 TFLOP/s dense, 4.8 TB/s) from issue 13: FLOPs and bytes, not measurements.
FLOOR_S = {"tokens": 1.1, "denoise_50": 18.4, "decode": 0.3}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


# ---- random weights in the release layout, made on the device (fast) and saved in bf16 ----------------


def random_state(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    """Random tensors for every entry of a (meta) module's state dict, on the CPU: matrices and convs
    N(0, 1/fan_in) so activations keep their scale through deep stacks at full size; norm weights near 1,
    biases near 0."""
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        noise = torch.randn(tuple(tensor.shape), generator=generator, device=device, dtype=torch.float32)
        if tensor.ndim == 1 and name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        elif tensor.ndim == 1:
            value = 0.02 * noise
        else:
            value = noise * (tensor[0].numel() ** -0.5)
        state[name] = value.to(dtype).cpu()
    return state


def write_t5(folder: Path, sizes, device: torch.device, dtype: torch.dtype, seed: int) -> None:
    from transformers import T5EncoderModel

    config = t5_config(sizes)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    state = random_state(model, device, dtype, seed)
    state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; the loader restores the tie
    folder.mkdir(parents=True, exist_ok=True)
    save_atomically(state, folder / "model.safetensors")
    with tempfile.TemporaryDirectory() as scratch:  # trained in the temp dir: its rename stays on one disk
        for path in train_tiny_sentencepiece(Path(scratch), min(sizes.vocab_size, 128)).parent.iterdir():
            shutil.copy(path, folder / path.name)
    config.to_json_file(str(folder / "config.json"))


def write_random_release(layout: ReleaseLayout, spec: ModelSpec, device: torch.device) -> None:
    """Every file the engine loads, in the release's layout, with random bf16 weights."""
    dtype, cpu = torch.bfloat16, torch.Generator().manual_seed(0)
    with torch.device("meta"):
        lm, decoder, network = SemanticLM(spec.llm), SemanticDecoder(spec.decoder), ControlDiT(spec.dit)
        vae = build_vae(spec.vae)
    save_atomically(random_state(lm, device, dtype, 1), layout.llm_file)
    decoder_state = random_state(decoder, device, dtype, 2)
    save_atomically({**decoder_state, **tokenizer_training_parts(spec, cpu)}, layout.tokenizer_file)
    write_t5(layout.flan_t5_dir, spec.flan_t5, device, dtype, 3)
    state = random_state(network, device, dtype, 4)
    table = sincos_table(spec).to(dtype)
    main = {**sat_dit_from_ours(state, "main"), "mixins.pos_embed.pos_embedding": table}
    save_torch_atomically(
        {"module": {f"model.diffusion_model.{k}": v for k, v in main.items()}}, layout.dit_file
    )
    (layout.dit_file.parents[1] / "latest").write_text(f"{layout.dit_file.parent.name}\n")
    control = {
        **sat_dit_from_ours(state, "control"),
        "mixins.pos_embed.pos_embedding": table,
        **{f"semantic_conditioner.semantic_model.model.{k}": v for k, v in decoder_state.items()},
    }
    del state
    module = {f"model.control_model.diffusion_model.{k}": v for k, v in control.items()}
    save_torch_atomically({"module": module}, layout.control_file)
    (layout.control_file.parents[1] / "latest").write_text(layout.control_file.parent.name)
    decoder_sat = sat_vae_decoder_from_ours(random_state(vae, device, dtype, 5), spec.vae.levels)
    save_torch_atomically({"state_dict": decoder_sat}, layout.vae_file)
    write_t5(layout.t5_dir, spec.t5, device, dtype, 6)


def weights_folder(need: int, chosen: Path | None) -> Path:
    """A scratch folder with `need` bytes free: RAM-backed /dev/shm when it and the RAM have room."""
    candidates = [chosen] if chosen else [Path("/dev/shm"), Path(tempfile.gettempdir()), Path.cwd()]
    available = None
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        pass
    seen = []
    for folder in candidates:
        if not folder.is_dir():
            continue
        free = shutil.disk_usage(folder).free
        seen.append(f"{folder}: {free / GiB:.1f} GiB free")
        # in RAM, leave room for the pinned host copies and the loaders' own reads
        in_ram = str(folder).startswith("/dev/shm")
        if free >= need and (not in_ram or available is None or available >= 3 * need):
            return Path(tempfile.mkdtemp(prefix="landiff-bench-", dir=folder))
    raise RuntimeError(f"no folder with {need / GiB:.1f} GiB free for the random weights ({'; '.join(seen)})")


# ---- sections ---------------------------------------------------------------------------------------


def run_profile(profile, spec, layout, device, steps, budget, out_dir, compile_dit, jobs=1) -> dict:
    """`jobs` jobs under `profile` on one pipeline: the first's figures (the row), the peak of the later
    ones (the steady state: balanced keeps pinned copies after the first job). The floors' ratios only
    where they mean something (full size on CUDA)."""
    row: dict = {"section": f"job, memory {profile}", "profile": profile, "steps": steps}
    floors = spec.name == "landiff" and device.type == "cuda"
    reset_peak(device)
    started = time.perf_counter()
    pipeline = Pipeline(spec, layout, device=device, memory=profile, dit=DiTOptions(compile=compile_dit))
    pipeline.stage1()
    pipeline.stage2()
    sync(device)
    row["load_s"] = time.perf_counter() - started
    row["memory"] = pipeline.memory_choice.record()
    row["dit"] = pipeline.dit.record()
    try:
        job = JobSpec(PROMPT, out_dir / f"{profile}.mp4", seed=0, steps=steps)
        result = pipeline.run(job, should_stop=lambda: budget.left() < 0)
    except JobCancelled as error:
        raise RuntimeError(f"stopped by the time budget ({error})") from None
    sync(device)
    timings = dict(result.timings_s)
    row["timings_s"] = timings
    # whether stage 1 replayed a captured CUDA graph, and if not, why (engine/models/llm_sampler.py)
    row["llm_decoding"] = json.loads(result.sidecar.read_text())["stage1"]["decoding"]
    row["peak_gib"] = peak_gib(device) if device.type == "cuda" else None
    for number in range(1, jobs):  # the same pipeline again: what it keeps between jobs is in place now
        reset_peak(device)
        again = JobSpec(PROMPT, out_dir / f"{profile}-{number}.mp4", seed=number, steps=steps)
        try:
            later = pipeline.run(again, should_stop=lambda: budget.left() < 0)
        except JobCancelled as error:
            raise RuntimeError(f"stopped by the time budget ({error})") from None
        sync(device)
        row["steady_peak_gib"] = peak_gib(device) if device.type == "cuda" else None
        row["later_timings_s"] = dict(later.timings_s)
    tokens = int(np.load(result.tokens).size)
    row["tokens"] = tokens
    # the decoding step's compile (first job of a pipeline, with compile on) is timed apart, as the DiT's
    decoding_s = timings.get("tokens", 0.0) - timings.get("tokens_compile", 0.0)
    if decoding_s > 0:
        row["tokens_per_s"] = tokens / decoding_s
        if floors:
            row["tokens_floor_ratio"] = decoding_s / FLOOR_S["tokens"]
    compile_s = timings.get("compile", 0.0)
    # with compile on, the first call of the shape compiles: it is timed apart and left out of the rate
    denoise_steps = steps - 1 if compile_s else steps
    denoise_s = timings["denoise"] - compile_s
    if denoise_steps > 0 and denoise_s > 0:
        row["steps_per_s"] = denoise_steps / denoise_s
        row["denoise_50_s"] = 50 / row["steps_per_s"]
        if floors:
            row["denoise_floor_ratio"] = row["denoise_50_s"] / FLOOR_S["denoise_50"]
    if floors and timings.get("decode"):
        row["decode_floor_ratio"] = timings["decode"] / FLOOR_S["decode"]
    del pipeline, result
    return row


def parallel_job(spec, root, steps, budget, out_dir, compile_dit, single_denoise_s) -> list[dict]:
    """One job per split over the first CUDA GPUs (cfg 2, then cfg 2 x seq 2 where 4 are there): its
    denoise seconds and the speed-up over the resident profile's single GPU, measured in this run."""
    from engine.generation.parallel.plan import ParallelPlan
    from engine.generation.parallel.ranks import parallel_pipeline

    count = torch.cuda.device_count()
    rows = []
    for plan in [p for p in (ParallelPlan(2, 1), ParallelPlan(2, 2)) if p.size <= count]:
        row: dict = {"section": f"job, parallel {plan.text()}", "steps": steps}
        devices = [f"cuda:{index}" for index in range(plan.size)]
        started = time.perf_counter()
        pipeline = parallel_pipeline(
            spec.name, root, devices, plan, out_dir, "resident", DiTOptions(compile=compile_dit)
        )
        try:
            pipeline.stage2()
            row["load_s"] = time.perf_counter() - started
            job = JobSpec(PROMPT, out_dir / f"parallel-{plan.size}.mp4", seed=0, steps=steps)
            result = pipeline.run(job, should_stop=lambda: budget.left() < 0)
        finally:
            pipeline.close()
        row["timings_s"] = dict(result.timings_s)
        denoise = result.timings_s["denoise"] - result.timings_s.get("compile", 0.0)
        row["steps_per_s"] = (steps - (1 if "compile" in result.timings_s else 0)) / denoise
        if single_denoise_s:
            row["speedup"] = single_denoise_s / denoise
        rows.append(row)
    return rows


def lane_jobs(spec, layout, steps, budget, out_dir, compile_dit, single_job_s, devices=("cuda:0", "cuda:1")):
    """Two jobs on devices[0] with their stage 1 on devices[1] (`serve --llm-device 1`): the second job's
    tokens are made while the first renders. Their wall time, against twice the resident job's stages."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    lane = Pipeline(spec, layout, device=torch.device(devices[1]), memory="resident")
    dit = DiTOptions(compile=compile_dit)
    worker = Pipeline(spec, layout, device=torch.device(devices[0]), memory="resident", dit=dit)
    lane.stage1()
    worker.stage2()
    row: dict = {"section": "jobs, llm lane", "steps": steps, "load_s": time.perf_counter() - started}
    jobs = [JobSpec(PROMPT, out_dir / f"lane-{index}.mp4", seed=index, steps=steps) for index in range(2)]
    stop = lambda: budget.left() < 0  # noqa: E731
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as ahead:
        first = lane.semantic_tokens(jobs[0], should_stop=stop)
        second = ahead.submit(lane.semantic_tokens, jobs[1], None, stop)
        worker.run(jobs[0], should_stop=stop, tokens=first)
        worker.run(jobs[1], should_stop=stop, tokens=second.result())
    row["wall_s"] = time.perf_counter() - started
    if single_job_s:
        row["lane_speedup"] = 2 * single_job_s / row["wall_s"]
    return row


class DispatchedOps(TorchDispatchMode):
    """The names of the aten ops a call dispatches (to see which SDPA backend PyTorch chose)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


def sdpa_backend(names: set[str]) -> str:
    """Which attention kernel ran, from the ops dispatched: a fused SDPA backend, or the math path."""
    fused = sorted(SDPA_BACKENDS[name] for name in names if name in SDPA_BACKENDS)
    if fused:
        return ", ".join(fused)
    return "math (unfused)" if "_softmax" in names or "softmax" in names else "none of SDPA's (own kernel)"


def attention_deviation(spec, device, budget) -> list[dict]:
    """One DiT call per attention kernel on random inputs; max deviation from sdpa (the default)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reset_peak(device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.device(device):
        network = ControlDiT(spec.dit).to(dtype).eval().requires_grad_(False)
        shape = spec.latent_shape(spec.llm.frames_per_segment)
        latents = torch.randn((2, *shape), generator=generator, device=device)
        text = torch.randn((2, spec.text_tokens, spec.dit.text_dim), generator=generator, device=device)
        semantic = torch.randn((1, *shape), generator=generator, device=device)
    timesteps = torch.tensor([999.0, 999.0], device=device)
    rows, reference = [], None
    for name in ATTENTION_KERNELS:
        row = {"section": f"DiT call, attention {name}", "attention": name}
        rows.append(row)
        if budget.left() < 5:
            row["status"] = "skipped: out of time"
            continue
        try:
            network.set_attention(attention_kernel(name, device, dtype))
            with torch.no_grad(), DispatchedOps() as ops:
                network(latents, text, timesteps, semantic)  # warm-up (kernel selection, workspaces)
                sync(device)
            row["sdpa_backend"] = sdpa_backend(ops.names)
            with torch.no_grad():
                started = time.perf_counter()
                out = network(latents, text, timesteps, semantic).float()
                sync(device)
            row["seconds"] = time.perf_counter() - started
            if reference is None:
                reference = out
            deviation = (out - reference).abs().max().item()
            row["max_abs_dev"] = deviation
            row["max_rel_dev"] = deviation / reference.abs().max().item()
            row["peak_gib"] = peak_gib(device)
            row["status"] = "ok"
        except MissingPackage as error:  # an optional package that is not installed: nothing to measure
            row["status"] = f"n/a: {error}"
        except SpeedOptionError as error:
            row["status"] = f"n/a: {error}" if device.type != "cuda" else f"failed: {error}"
        except Exception as error:  # noqa: BLE001 - a kernel that cannot run is a row, not the end
            row["status"] = f"failed: {type(error).__name__}: {first_line(error)}"
    del network
    return rows


def run(args: argparse.Namespace) -> dict:
    budget = Budget(args.budget)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda") if cuda else torch.device("cpu")
    spec = get_spec(args.spec or ("landiff" if cuda else "tiny"))
    steps = args.steps or (CUDA_STEPS if cuda else 3)
    compile_dit = None if cuda else False
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if cuda else "CPU",
        "spec": spec.name,
        "steps": steps,
        "floors_s": FLOOR_S,
        "sections": [],
    }
    sections = report["sections"]

    def section(name: str, work, minimum_s: float) -> dict | list | None:
        if budget.left() < minimum_s:
            sections.append({"section": name, "status": f"skipped: {budget.left():.0f} s left of the budget"})
            return None
        started = time.perf_counter()
        try:
            result = work()
        except Exception as error:  # noqa: BLE001 - record it and go on to the next section
            traceback.print_exc(file=sys.stderr)
            sections.append(
                {
                    "section": name,
                    "status": f"failed: {type(error).__name__}: {first_line(error)}",
                    "seconds": time.perf_counter() - started,
                }
            )
            return None
        rows = result if isinstance(result, list) else [result]
        for row in rows:
            row.setdefault("section", name)
            row.setdefault("status", "ok")
            row.setdefault("seconds", time.perf_counter() - started)
        sections.extend(rows)
        return result

    scratch: Path | None = None
    try:

        def weights() -> dict:
            nonlocal scratch
            need = int(spec_weight_sizes(spec, torch.bfloat16).total * 1.2) + GiB // 4
            scratch = weights_folder(need, args.weights)
            layout = layout_for(spec.name, scratch)
            reset_peak(device)
            write_random_release(layout, spec, device)
            written = sum(p.stat().st_size for p in scratch.rglob("*") if p.is_file())
            return {"section": "write random weights", "folder": str(scratch), "bytes": written}

        written = section("write random weights", weights, 10) is not None
        if written:
            layout = layout_for(spec.name, scratch)
            # as the engine's first job would (its sidecar names the weights' SHA-256), but not inside a job
            section("hash random weights", lambda: {"files": len(file_checksums(layout))}, 10)
            out_dir = scratch / "videos"
            out_dir.mkdir()
            for profile in args.profiles:
                jobs = 2 if profile == "balanced" else 1
                section(
                    f"job, memory {profile}",
                    lambda p=profile, n=jobs: run_profile(
                        p, spec, layout, device, steps, budget, out_dir, compile_dit, n
                    ),
                    60 if cuda else 2,
                )
                reset_peak(device)
        section("attention", lambda: attention_deviation(spec, device, budget), 20 if cuda else 1)
        gpus = torch.cuda.device_count() if cuda else 0
        if written and gpus >= 2:
            single = next((r for r in sections if r["section"] == "job, memory resident"), {})
            denoise = single.get("timings_s", {}).get("denoise")
            single_s = None if denoise is None else denoise - single["timings_s"].get("compile", 0.0)
            section(
                "parallel",
                lambda: parallel_job(spec, scratch, steps, budget, out_dir, compile_dit, single_s),
                90,
            )
            job_s = None
            if single.get("timings_s"):
                job_s = warm_seconds(single["timings_s"])
            section(
                "llm lane",
                lambda: lane_jobs(spec, layout, steps, budget, out_dir, compile_dit, job_s),
                90,
            )
        else:
            why = f"skipped: needs 2 or more CUDA GPUs, {gpus} here"
            print(f"parallel, llm lane: {why}")
            sections.append({"section": "job, parallel", "status": why})
            sections.append({"section": "jobs, llm lane", "status": why})
    finally:
        if scratch is not None and not args.keep_weights:
            shutil.rmtree(scratch, ignore_errors=True)
    report["budget_left_s"] = budget.left()
    return report


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


COMPILES = ("compile", "tokens_compile")  # the DiT's (within "denoise") and the decoding step's ("tokens")


def warm_seconds(timings: dict[str, float]) -> float:
    """A job's stages with their compiles left out, as an engine already warm runs them."""
    compiles = sum(timings.get(key, 0.0) for key in COMPILES)
    return sum(seconds for key, seconds in timings.items() if key not in COMPILES) - compiles


def table(report: dict) -> tuple[list[str], list[list[str]]]:
    def fmt(value, pattern="{:.2f}") -> str:
        return "" if value is None else pattern.format(value)

    headers = ["section", "status", "s", "text s", "tokens s", "tok/s", "x floor", "denoise s", "steps/s"]
    headers += ["50 steps s*", "x floor", "decode s", "x floor", "compiles s", "peak GiB", "note"]
    rows = []
    for row in report["sections"]:
        t = row.get("timings_s", {})
        compiles = [t[key] for key in COMPILES if key in t]
        note = ""
        if "max_abs_dev" in row:
            note = f"max |dev| vs sdpa {row['max_abs_dev']:.3g} (rel {row['max_rel_dev']:.3g})"
            note += f"; kernel: {row['sdpa_backend']}"
        elif "memory" in row:
            note = f"LLM decoding: {row['llm_decoding']}; {row['memory']['reason']}"
            if row.get("steady_peak_gib") is not None:
                note = f"second job's peak {row['steady_peak_gib']:.2f} GiB; {note}"
        elif "lane_speedup" in row:
            note = f"2 jobs in {row['wall_s']:.1f} s: {row['lane_speedup']:.2f}x the resident job's, twice"
        elif "speedup" in row:
            note = f"{row['speedup']:.2f}x the resident job's denoise (one GPU), measured here"
        elif "bytes" in row:
            note = f"{row['bytes'] / GiB:.1f} GiB in {row['folder']}"
        rows.append(
            [
                row["section"],
                shorten(row.get("status", ""), 48),
                fmt(row.get("seconds"), "{:.1f}"),
                fmt(t.get("text")),
                fmt(t.get("tokens")),
                fmt(row.get("tokens_per_s"), "{:.0f}"),
                fmt(row.get("tokens_floor_ratio")),
                fmt(t.get("denoise")),
                fmt(row.get("steps_per_s"), "{:.3f}"),
                fmt(row.get("denoise_50_s")),
                fmt(row.get("denoise_floor_ratio")),
                fmt(t.get("decode")),
                fmt(row.get("decode_floor_ratio")),
                fmt(sum(compiles) if compiles else None),
                fmt(row.get("peak_gib")),
                note,
            ]
        )
    return headers, rows


def print_plan(args: argparse.Namespace) -> int:
    """The expected seconds of each part of a CUDA run (bench/gpu_plan.py); 0 when it fits the budget
    with the margin, 1 when it does not."""
    spec = get_spec(args.spec or "landiff")
    steps = args.steps or CUDA_STEPS
    rows = gpu_plan.plan(spec, steps, tuple(args.profiles), len(ATTENTION_KERNELS))
    gpus = list(gpu_plan.GPUS)
    headers = ["part", *[f"{gpu} s" for gpu in gpus], "basis (estimates, not measurements)"]
    print(
        f"plan of bench/gpu.py: spec {spec.name}, {steps} denoising steps a job, budget {args.budget:.0f} s"
    )
    print_rows(headers, [[row["part"], *[f"{row[gpu]:.1f}" for gpu in gpus], row["basis"]] for row in rows])
    allowed = (1 - gpu_plan.MARGIN) * args.budget
    spent = ", ".join(f"{gpu} {seconds:.0f} s" for gpu, seconds in gpu_plan.totals(rows).items())
    fits = gpu_plan.fits(rows, args.budget)
    print(
        f"total: {spent}; {'fits' if fits else 'does NOT fit'} {allowed:.0f} s (the budget less its margin)"
    )
    return 0 if fits else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help=f"seconds for everything (default {BUDGET_S:.0f})"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"DiT steps per job (default: {CUDA_STEPS} on CUDA, the 50-step time extrapolated; 3 on CPU)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print what each part should cost on an H100 and an H200; run nothing",
    )
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES))
    parser.add_argument("--spec", choices=("landiff", "tiny"), default=None, help="default: landiff on CUDA")
    parser.add_argument("--cpu", action="store_true", help="the CPU smoke even where CUDA is present")
    parser.add_argument("--weights", type=Path, default=None, help="folder for the random weights")
    parser.add_argument("--keep-weights", action="store_true", help="do not delete the random weights")
    args = parser.parse_args(argv)
    if args.plan:
        return print_plan(args)
    report = run(args)
    headers, rows = table(report)
    head = f"{report['device']}, torch {report['torch']}, spec {report['spec']}, {report['steps']} steps"
    print(f"{head}, {report['date']}")
    print_rows(headers, rows)
    print("floors (issue 13, H200): LLM 1.1 s, 50 DiT steps 18.4 s, VAE 0.3 s; x floor = measured / floor")
    print(f"* extrapolated to 50 steps from the {report['steps']} run")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [row["section"] for row in report["sections"] if row.get("status", "ok").startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
