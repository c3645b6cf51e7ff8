"""What `bench/gpu.py` should cost on one H100 or H200, worked out on any machine before the GPU run.

Every part's seconds come from the spec's own FLOPs and bytes (counted on the meta device) over a GPU's
peak, at an efficiency written below; host parts (writing, hashing, loading the random weights) from
their bytes over an assumed host rate. None of this is a measurement: these are the assumptions the one
GPU run checks, and the plan shows whether that run fits its budget with a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Peak bf16 dense matmul and memory bandwidth (SXM parts, vendor figures).
GPUS = {
    "H100": {"flops": 989e12, "bandwidth": 3.35e12},
    "H200": {"flops": 989e12, "bandwidth": 4.8e12},
}
# Assumed fractions of those peaks the stages reach (the targets of issue 13 are about these).
EFFICIENCY = {"dit": 0.55, "llm": 0.30, "vae": 0.15, "text": 0.30}
VAE_FLOOR_S = 0.3  # issue 13's FLOPs floor of one 49-frame VAE decode on an H200 (compute-bound)
# Assumed host rates on the lent box (16 cores, RAM-backed /dev/shm), bytes per second.
HOST = {
    "write": 1.5e9,  # random bf16 tensors made on the GPU, copied back and saved (safetensors / torch.save)
    "sha256": 1.0e9,  # one core's SHA-256; files are hashed side by side, the largest sets the time
    "load": 3.0e9,  # the engine's loaders from /dev/shm to the GPU (a .pt's pickle is the slow part)
    "pcie": 20e9,  # pinned host -> GPU (balanced's encoders, low's streamed blocks)
}
STARTUP_S = 15.0  # interpreter, imports, CUDA context, cuBLAS/cuDNN handles
COMPILE_COLD_S = 90.0  # torch.compile of the DiT's blocks with an empty inductor cache (first job)
COMPILE_WARM_S = 20.0  # the same shapes again, the cache warm (dynamo still traces)
# torch.compile of the language model's decoding step, once per process: later pipelines and video lengths
# reuse its graph (measured on the CPU: 0.01 s). On the 2-core CPU, 24 blocks took 98 s, 51 s of it gcc;
# triton's kernels (a handful once deduplicated) build in parallel on the lent box's 16 cores.
COMPILE_LLM_COLD_S = 40.0
JOB_OVERHEAD_S = 3.0  # mp4 encoding, thumbnail, sidecar, Python between stages
MARGIN = 0.25  # the plan must leave this fraction of the budget unused


@dataclass(frozen=True)
class Costs:
    """What one job of the spec moves and computes."""

    weight_bytes: int  # every model, bf16
    largest_file_bytes: int  # the largest weight file (hashing runs the files side by side)
    pinned_bytes: int  # what balanced brings in from the host per job (encoders and the language model)
    dit_stream_bytes: int  # what low streams per denoising step (the DiT's blocks in 8-bit)
    lm_bytes: int
    kv_bytes_mean: int  # the language model's KV cache read per token, averaged over the clip
    tokens: int  # decoding steps of one clip
    text_flops: float  # both T5 encoders over their prompt lengths
    dit_flops: float  # one denoising step, both guidance halves


def costs(spec) -> Costs:
    from transformers import T5Config, T5EncoderModel

    from engine.models.control_dit import ControlDiT
    from engine.models.llm import SemanticLM
    from engine.models.semantic_decoder import SemanticDecoder
    from engine.models.token_layout import token_layout
    from engine.models.video_vae import build_vae

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def t5(sizes) -> int:
        config = T5Config(**vars(sizes), feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        return params(T5EncoderModel(config))

    with torch.device("meta"):
        flan, text = t5(spec.flan_t5), t5(spec.t5)
        lm, decoder = params(SemanticLM(spec.llm)), params(SemanticDecoder(spec.decoder))
        dit, vae = params(ControlDiT(spec.dit)), params(build_vae(spec.vae))
    width = 2  # bf16
    frames = spec.llm.frames_per_segment
    t, _, h, w = spec.latent_shape(frames)
    patch = spec.dit.patch_size
    length = t * (h // patch) * (w // patch) + spec.text_tokens
    layers = spec.dit.num_layers + spec.dit.control_layers
    forward = 2 * dit * length + 4 * length**2 * spec.dit.hidden_size * layers
    steps = len(token_layout(spec.llm, frames))
    llm = spec.llm
    prefix = 4 + llm.max_text_tokens
    kv_mean = llm.num_blocks * 2 * 2 * llm.hidden_dim * (prefix + steps / 2) * width  # K and V, 2 rows
    return Costs(
        weight_bytes=(flan + text + lm + 2 * decoder + dit + vae) * width,
        largest_file_bytes=max(flan, text, dit) * width,  # a T5 folder's shards are separate files
        pinned_bytes=(max(flan, text) + lm) * width,
        dit_stream_bytes=dit,  # 8-bit
        lm_bytes=lm * width,
        kv_bytes_mean=int(kv_mean),
        tokens=steps,
        text_flops=2.0 * (flan + text) * llm.max_text_tokens,
        dit_flops=2 * forward,
    )


def job_seconds(c: Costs, gpu: dict, steps: int, profile: str) -> dict[str, float]:
    """One job's stages on `gpu` under a memory profile."""
    per_token = (c.lm_bytes + c.kv_bytes_mean) / (gpu["bandwidth"] * EFFICIENCY["llm"])
    step = c.dit_flops / (gpu["flops"] * EFFICIENCY["dit"])
    if profile == "low":
        step = max(step, c.dit_stream_bytes / HOST["pcie"])  # the streamed blocks overlap the compute
    seconds = {
        "text": c.text_flops / (gpu["flops"] * EFFICIENCY["text"]),
        "tokens": c.tokens * per_token,
        "denoise": steps * step,
        "decode": VAE_FLOOR_S * GPUS["H200"]["flops"] / gpu["flops"] / EFFICIENCY["vae"],
        "other": JOB_OVERHEAD_S,
    }
    if profile != "resident":
        seconds["text"] += c.pinned_bytes / HOST["pcie"]
    return seconds


def plan(spec, steps: int, profiles: tuple[str, ...], attention_kernels: int) -> list[dict]:
    """The run's parts, in order, with the seconds each should take on each GPU and what that rests on."""
    c = costs(spec)
    rows: list[dict] = []

    def part(name: str, basis: str, seconds) -> None:
        rows.append({"part": name, "basis": basis, **{gpu: seconds(GPUS[gpu]) for gpu in GPUS}})

    gib = 2**30
    part("start-up", "imports, CUDA context (assumed)", lambda g: STARTUP_S)
    part(
        "write random weights",
        f"{c.weight_bytes / gib:.1f} GiB at {HOST['write'] / 1e9:.1f} GB/s",
        lambda g: c.weight_bytes / HOST["write"],
    )
    part(
        "hash random weights",
        f"largest file {c.largest_file_bytes / gib:.1f} GiB at {HOST['sha256'] / 1e9:.1f} GB/s",
        lambda g: c.largest_file_bytes / HOST["sha256"],
    )
    for index, profile in enumerate(profiles):
        part(
            f"load, {profile}",
            f"{c.weight_bytes / gib:.1f} GiB at {HOST['load'] / 1e9:.1f} GB/s",
            lambda g: c.weight_bytes / HOST["load"],
        )
        compile_s = COMPILE_COLD_S + COMPILE_LLM_COLD_S if index == 0 else COMPILE_WARM_S
        compiles = (
            f"compile {COMPILE_COLD_S:.0f} s DiT + {COMPILE_LLM_COLD_S:.0f} s LLM step (cold)"
            if index == 0
            else f"compile {COMPILE_WARM_S:.0f} s (cache warm)"
        )
        jobs = 2 if profile == "balanced" else 1  # balanced's second job: its steady-state peak
        for job in range(jobs):
            label = f"job, {profile}" + (" (second)" if job else "")
            lm_gb = (c.lm_bytes + c.kv_bytes_mean) / 1e9
            basis = (
                f"{c.tokens} tokens x {lm_gb:.1f} GB at {EFFICIENCY['llm']:.0%} bandwidth; {steps} steps x "
                f"{c.dit_flops / 1e12:.0f} TFLOP at {EFFICIENCY['dit']:.0%}"
            )
            first = job == 0
            part(
                label,
                basis + (f"; {compiles}" if first else ""),
                lambda g, p=profile, extra=(compile_s if first else 0.0): (
                    sum(job_seconds(c, g, steps, p).values()) + extra
                ),
            )
    per_call = c.dit_flops / 2  # one DiT call of the attention rows: both halves in one batch, once
    part(
        "attention rows",
        f"{attention_kernels} kernels x 2 calls x {per_call / 1e12:.0f} TFLOP, set-up 10 s",
        lambda g: 10.0 + attention_kernels * 2 * (2 * per_call) / (g["flops"] * EFFICIENCY["dit"]),
    )
    return rows


def totals(rows: list[dict]) -> dict[str, float]:
    return {gpu: sum(row[gpu] for row in rows) for gpu in GPUS}


def fits(rows: list[dict], budget_s: float) -> bool:
    return all(total <= (1 - MARGIN) * budget_s for total in totals(rows).values())
