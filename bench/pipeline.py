"""Stage-2 and whole-pipeline benchmark on random weights.

    python bench/pipeline.py              # tiny on CPU (always); full size too when a GPU is present
    python bench/pipeline.py --full       # full size only (GPU, ~20 GB free)

Prints one table: stage, time, steps/s, peak memory. Full size covers one denoising step with and without
the control branch, the whole 50-step sampler, and the VAE decode of 13 latent frames; the tiny rows run
the real `Pipeline` end to end (tiny weights written to a temporary folder). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Row, peak_memory, print_table, timed  # noqa: E402

from engine.generation.job import JobSpec  # noqa: E402
from engine.generation.pipeline import Pipeline  # noqa: E402
from engine.models.control_dit import ControlDiT  # noqa: E402
from engine.models.dpm_sampler import DpmSolverSampler  # noqa: E402
from engine.models.token_layout import token_layout  # noqa: E402
from engine.models.video_vae import build_vae, decode_latents  # noqa: E402
from engine.specs import get_spec  # noqa: E402
from engine.weights.layout import layout_for  # noqa: E402
from engine.weights.tiny import ensure_tiny_release  # noqa: E402


def bench_tiny(rows: list[Row]) -> None:
    cpu = torch.device("cpu")
    spec = get_spec("tiny")
    with tempfile.TemporaryDirectory() as scratch:
        layout = layout_for("tiny", Path(scratch))
        ensure_tiny_release(layout, spec)
        pipeline = Pipeline(spec, layout, device=cpu)
        (_, seconds) = timed(cpu, lambda: (pipeline.stage1(), pipeline.stage2()))
        rows.append(Row("tiny load (both stages)", seconds, "", peak_memory(cpu)))
        job = JobSpec("A snail crawling on green moss.", Path(scratch) / "out" / "v.mp4", steps=50)
        pipeline.run(job)  # warm-up
        result, seconds = timed(cpu, lambda: pipeline.run(job))
        steps = {"tokens": len(token_layout(spec.llm, spec.llm.frames_per_segment)), "denoise": job.steps}
        for stage, stage_seconds in result.timings_s.items():
            count = steps.get(stage)
            rate = f"{count / stage_seconds:,.1f} steps/s" if count else ""
            rows.append(Row(f"tiny {stage}", stage_seconds, rate, peak_memory(cpu)))
        rows.append(Row("tiny whole job", seconds, "", peak_memory(cpu)))


def random_network(device: torch.device, dtype: torch.dtype) -> ControlDiT:
    with torch.device(device):
        network = ControlDiT(get_spec("landiff").dit)
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(0, 0.02)
    return network.to(dtype).eval()


def bench_full_network(rows: list[Row], device: torch.device) -> torch.Tensor:
    spec = get_spec("landiff")
    dtype = torch.bfloat16
    network = random_network(device, dtype)
    frames = spec.llm.frames_per_segment
    latents = torch.randn(2, *spec.latent_shape(frames), device=device)
    text = torch.randn(2, spec.text_tokens, spec.dit.text_dim, device=device, dtype=dtype)
    timesteps = torch.full((2,), 999.0, device=device)
    features = torch.randn(1, frames, spec.decoder.feature_channels, 30, 45, device=device, dtype=dtype)
    with torch.no_grad():
        semantic, seconds = timed(device, lambda: network.semantic_conditioner(features))
        rows.append(Row("full semantic conditioner", seconds, "", peak_memory(device)))
        network(latents, text, timesteps, semantic)  # warm-up
        _, seconds = timed(device, lambda: network(latents, text, timesteps, semantic))
        rows.append(
            Row(
                "full DiT step, CFG batch 2, with control",
                seconds,
                f"{1 / seconds:.2f} steps/s",
                peak_memory(device),
            )
        )
        video, words, temb = network.main.embed(latents, text, timesteps)

        def main_only():
            v, w = video, words
            for block in network.main.transformer_blocks:
                v, w = block(hidden_states=v, encoder_hidden_states=w, temb=temb)
            return v

        _, seconds = timed(device, main_only)
        rows.append(
            Row("full DiT step, main blocks only", seconds, f"{1 / seconds:.2f} steps/s", peak_memory(device))
        )

        def run_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return network(x, text, t, semantic)

        noise = torch.randn(1, *spec.latent_shape(frames), device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        sampled, seconds = timed(
            device, lambda: DpmSolverSampler().sample(run_network, noise, 50, generator=generator)
        )
        rows.append(Row("full 50-step sampler", seconds, f"{50 / seconds:.2f} steps/s", peak_memory(device)))
    return sampled


def bench_full_vae(rows: list[Row], device: torch.device, sampled: torch.Tensor) -> None:
    spec = get_spec("landiff")
    dtype = torch.bfloat16
    torch.cuda.empty_cache()
    with torch.device(device):
        vae = build_vae(spec.vae)
    vae = vae.to(dtype).eval()
    with torch.no_grad():
        _, seconds = timed(device, lambda: decode_latents(vae, sampled * 0.1))
    rows.append(Row("full VAE decode (13 latent frames)", seconds, "", peak_memory(device)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full size only")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list[Row] = []
    if not args.full:
        bench_tiny(rows)
    if torch.cuda.is_available():
        sampled = bench_full_network(rows, torch.device("cuda"))
        bench_full_vae(rows, torch.device("cuda"), sampled)
    elif args.full:
        parser.error("--full needs a CUDA GPU")
    print_table(rows)


if __name__ == "__main__":
    main()
