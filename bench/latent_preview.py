"""Live previews' cost: stage 2's denoising with and without them, side by side in one run, then the cost at
full size computed from one preview's measured cost and the DiT's work per step.

    python bench/latent_preview.py            # tiny on CPU: 41 frames (5 chunks) x 50 steps, 7 repeats
    python bench/latent_preview.py --frames 65 --steps 50 --repeats 9 --tflops 300

Modes, taking turns `repeats` times (the best run of each shown, and the medians' ratio): `off` (no
previews), `on` (the engine's policy: at most one a second, engine/generation/latent_preview.py) and
`every step` (a preview on every step but the last: the worst case, whose difference to `off` divided by
the previews made is one preview's cost). Each preview is written to a PNG atomically, as the engine's
worker writes live.png. Then one preview's host cost at the release's latent size (16 x 60 x 90: the
projection, the copy, the PNG) is timed alone, and its share of a full-size job is computed: at most one
preview per max(step time, 1 s), the step's time estimated from the DiT's FLOPs (CogVideoX-2b blocks +
the 15-layer control branch, CFG batch of 2, 13 latent frames of 60 x 90) at `--tflops` of sustained
bf16 throughput. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_rows  # noqa: E402

from engine.generation import latent_preview  # noqa: E402
from engine.generation.latent_preview import Projection  # noqa: E402
from engine.generation.lengths import plan_length, rules_for  # noqa: E402
from engine.generation.pipeline import Pipeline  # noqa: E402
from engine.generation.video import write_thumbnail  # noqa: E402
from engine.specs import get_spec  # noqa: E402
from engine.weights.layout import layout_for  # noqa: E402
from engine.weights.tiny import ensure_tiny_release  # noqa: E402

MODES = {"off": None, "on": latent_preview.PREVIEW_INTERVAL_S, "every step": 0.0}


def dit_step_flops(model: str = "landiff", text_tokens: int = 226) -> float:
    """FLOPs of one denoising step of the full-size DiT on one chunk: two forwards (CFG), each over the
    chunk's patch tokens and the text: 2 FLOPs per weight per token in the blocks (12 h^2 weights a block:
    q, k, v, out and a 4x MLP) plus attention's 4 N^2 h a block, main and control blocks alike."""
    spec = get_spec(model)
    dit = spec.dit
    frames, _, height, width = spec.latent_shape(spec.llm.frames_per_segment)
    tokens = frames * (height // dit.patch_size) * (width // dit.patch_size) + text_tokens
    blocks = dit.num_layers + dit.control_layers
    h = dit.hidden_size
    per_forward = blocks * (2 * 12 * h * h * tokens + 4 * tokens * tokens * h)
    return 2 * per_forward


def one_preview_seconds(folder: Path, repeats: int = 200) -> float:
    """Host seconds of one preview at the release's latent size: the projection of one latent frame, the
    uint8 picture to the host, and its PNG written atomically (median)."""
    spec = get_spec("landiff")
    _, channels, height, width = spec.latent_shape(spec.llm.frames_per_segment)
    projection = Projection(torch.randn(channels + 1, 3) * 0.2)
    frame = torch.randn(channels, height, width)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        write_thumbnail(projection.image(frame), folder / "live.png", width=720)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=41, help="the tiny video's frames (41: 5 chunks)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tflops", type=float, default=300.0, help="sustained bf16 TFLOP/s of the GPU")
    args = parser.parse_args()
    spec = get_spec("tiny")
    plan = plan_length(rules_for("tiny"), args.frames, None)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        layout = layout_for("tiny", folder / "weights")
        ensure_tiny_release(layout, spec)
        stage2 = Pipeline(spec, layout, device=torch.device("cpu")).stage2()
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, spec.llm.codebook_size, (plan.segments * 11,), generator=generator)
        text = stage2.encode_prompt("A snail crawling on green moss.")
        fitting = time.perf_counter()
        stage2.preview_projection()
        fit_s = time.perf_counter() - fitting
        made = [0]

        def on_preview(index: int, step: int, total: int, picture) -> None:
            write_thumbnail(picture, folder / "live.png", width=720)
            made[0] += 1

        def denoise(interval: float | None) -> tuple[float, float, int]:
            made[0] = 0
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in stage2.render_chunks(
                text,
                codes,
                plan,
                seed=1,
                steps=args.steps,
                on_preview=None if interval is None else on_preview,
                preview_interval_s=interval,
            ):
                pass
            return time.perf_counter() - wall, time.process_time() - cpu, made[0]

        denoise(None)  # warm-up
        denoise(0.0)
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu_seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        previews: dict[str, list[int]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode, interval in MODES.items():
                wall, cpu, count = denoise(interval)
                seconds[mode].append(wall)
                cpu_seconds[mode].append(cpu)
                previews[mode].append(count)
        preview_s = one_preview_seconds(folder)
    steps = args.steps * plan.chunks
    # best of the interleaved runs: on a shared machine the noise only ever adds time
    base_wall, base_cpu = min(seconds["off"]), min(cpu_seconds["off"])
    rows = []
    for mode in MODES:
        wall, cpu = min(seconds[mode]), min(cpu_seconds[mode])
        rows.append(
            [
                mode,
                f"{statistics.median(previews[mode]):g}",
                f"{steps / wall:.1f}",
                f"{wall / base_wall:.4f}",
                f"{cpu / base_cpu:.4f}",
                f"{statistics.median(seconds[mode]) / statistics.median(seconds['off']):.4f}",
                f"{(wall - base_wall) * 1e3:+.1f}",
            ]
        )
    print(
        f"tiny on CPU, {torch.get_num_threads()} threads, {plan.chunks} chunk(s) x {args.steps} steps, "
        f"best of {args.repeats} interleaved runs; projection fitted to the tiny VAE in {fit_s:.2f} s "
        "(once per pipeline)"
    )
    headers = ["previews", "made", "steps/s", "time vs off", "CPU time vs off", "median vs off", "ms vs off"]
    print_rows(headers, rows)
    every = statistics.median(previews["every step"])
    per_tiny = (min(cpu_seconds["every step"]) - base_cpu) / max(every, 1)
    print(f"\none preview on the tiny model (every-step run, CPU time): {per_tiny * 1e3:.2f} ms")
    flops = dit_step_flops()
    step_s = flops / (args.tflops * 1e12)
    share = preview_s / max(step_s, latent_preview.PREVIEW_INTERVAL_S)
    print(
        f"one preview at the release's latent size (16 x 60 x 90), host side, on this CPU: "
        f"{preview_s * 1e3:.2f} ms\n"
        f"full-size DiT step: {flops / 1e12:.0f} TFLOP (2 forwards of 45 blocks over 17,776 tokens) = "
        f"{step_s:.2f} s at {args.tflops:g} TFLOP/s\n"
        f"full size: at most one preview per max(step, {latent_preview.PREVIEW_INTERVAL_S:g} s) -> "
        f"at most {share * 100:.3f} % of the denoising time"
    )


if __name__ == "__main__":
    main()
