"""Long-video benchmark: seconds per chunk and peak memory per chunk, which should stay flat.

    python bench/long.py                 # tiny on CPU (whole jobs); full size too when a GPU is present
    python bench/long.py --chunks 6      # how many chunks (default 4)
    python bench/long.py --full          # full size only (GPU, ~25 GB free)
    python bench/long.py --smoke         # also the random-weight driver on the tiny spec (checks it on CPU)

The tiny rows run the real `Pipeline` (tiny weights in a temporary folder) and report each chunk's
denoise, decode and write time. The full-size rows run stage 2's chunk driver (`VideoStage.render_chunks`
and the streaming VAE decoder) on random weights: 50 steps per chunk, overlap 7, and the GPU's peak
memory during each chunk. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Row, peak_memory, print_table  # noqa: E402

from engine.generation.job import JobSpec  # noqa: E402
from engine.generation.lengths import plan_length, rules_for  # noqa: E402
from engine.generation.pipeline import Pipeline  # noqa: E402
from engine.generation.stage2 import VideoStage  # noqa: E402
from engine.models.control_dit import ControlDiT  # noqa: E402
from engine.models.semantic_decoder import SemanticDecoder  # noqa: E402
from engine.models.token_layout import codes_per_video  # noqa: E402
from engine.models.video_vae import build_vae  # noqa: E402
from engine.specs import get_spec  # noqa: E402
from engine.weights.layout import layout_for  # noqa: E402
from engine.weights.tiny import ensure_tiny_release  # noqa: E402


def bench_tiny(rows: list[Row], chunks: int) -> None:
    cpu = torch.device("cpu")
    spec = get_spec("tiny")
    rules = rules_for(spec.name)
    plan = plan_length(rules, plan_length(rules).frames_after(chunks))
    with tempfile.TemporaryDirectory() as scratch:
        layout = layout_for("tiny", Path(scratch))
        ensure_tiny_release(layout, spec)
        pipeline = Pipeline(spec, layout, device=cpu)
        pipeline.run(JobSpec("warm-up", Path(scratch) / "w.mp4", steps=2))
        job = JobSpec(
            "A snail crawling on green moss.", Path(scratch) / "v.mp4", steps=50, frames=plan.frames
        )
        started = time.perf_counter()
        result = pipeline.run(job)
        seconds = time.perf_counter() - started
    for timing in result.chunk_timings:
        total = sum(timing.stage_seconds().values())
        detail = f"denoise {timing.denoise_s:.2f} decode {timing.decode_s:.2f} write {timing.write_s:.2f}"
        rows.append(Row(f"tiny chunk {timing.index} ({detail})", total, "", peak_memory(cpu)))
    per_chunk = sum(sum(timing.stage_seconds().values()) for timing in result.chunk_timings)
    rows.append(
        Row(
            f"tiny job, {result.frames} frames",
            seconds,
            f"{per_chunk / chunks:.2f} s/chunk",
            peak_memory(cpu),
        )
    )


def random_stage(spec, device: torch.device, dtype: torch.dtype) -> VideoStage:
    with torch.device(device):
        network = ControlDiT(spec.dit)
        decoder = SemanticDecoder(spec.decoder)
        vae = build_vae(spec.vae)
    with torch.no_grad():
        for module in (network, decoder):
            for param in module.parameters():
                param.normal_(0, 0.02)
    network, decoder, vae = (m.to(dtype).eval() for m in (network, decoder, vae))
    return VideoStage(spec, None, decoder, network, vae, device)  # text states are given, no encoder


def bench_random(
    rows: list[Row], chunks: int, device: torch.device, model: str = "landiff", steps: int = 50
) -> None:
    spec = get_spec(model)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    stage = random_stage(spec, device, dtype)
    rules = rules_for(spec.name)
    plan = plan_length(rules, plan_length(rules).frames_after(chunks))
    count = codes_per_video(spec.llm, spec.llm.frames_per_segment)
    codes = torch.randint(0, spec.llm.codebook_size, (plan.segments * count,))
    text = torch.randn(2, spec.text_tokens, spec.dit.text_dim, device=device, dtype=dtype)
    text[0] = 0
    decoder = stage.video_decoder()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    started = time.perf_counter()
    for index, latents in enumerate(stage.render_chunks(text, codes, plan, seed=0, steps=steps)):
        sync()
        denoised = time.perf_counter()
        new = latents if index == 0 else latents[:, plan.overlap :]
        frames = stage.frames(decoder, new * 0.1)
        sync()
        decoded = time.perf_counter()
        rows.append(
            Row(
                f"{model} random chunk {index} ({frames.shape[0]} frames; denoise {denoised - started:.1f} "
                f"decode {decoded - denoised:.1f})",
                decoded - started,
                f"{steps / (denoised - started):.2f} steps/s",
                peak_memory(device),
            )
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=4, help="chunks per video (default 4)")
    parser.add_argument("--full", action="store_true", help="full size only")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="also run the random-weight driver on the tiny spec (CPU, 2 steps)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list[Row] = []
    if not args.full:
        bench_tiny(rows, args.chunks)
    if args.smoke:
        bench_random(rows, args.chunks, torch.device("cpu"), "tiny", steps=2)
    if torch.cuda.is_available():
        bench_random(rows, args.chunks, torch.device("cuda"))
    elif args.full:
        parser.error("--full needs a CUDA GPU")
    print_table(rows, heading="chunk", width=64)


if __name__ == "__main__":
    main()
