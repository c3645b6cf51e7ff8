"""Step caching side by side: stage 2's denoising at several `cache` thresholds, measured in one run.

    python bench/step_cache.py                       # tiny on CPU: thresholds 0, 0.1, 0.2, 50 steps
    python bench/step_cache.py --thresholds 0 0.1 0.2 0.3 --steps 50 --repeats 5

The same tokens, prompt and seed at every threshold; the thresholds take turns, `repeats` times, and each
row shows the median. Columns: DiT calls (one per CFG branch and step) and those the cache skipped, the
denoising rate (wall clock) and its ratio to threshold 0 in this run, the same ratio in this process's CPU
time (steadier than the wall clock on a shared machine), and how far the final latents land from the exact
path's (mean |x - exact| / mean |exact|). That distance is not a quality measure: the tiny model's weights
are random, and the quality cost on LanDiff's real weights is not measured. Not a test.
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

from engine.generation.lengths import plan_length, rules_for  # noqa: E402
from engine.generation.pipeline import Pipeline  # noqa: E402
from engine.models.step_cache import CacheCounts  # noqa: E402
from engine.specs import get_spec  # noqa: E402
from engine.weights.layout import layout_for  # noqa: E402
from engine.weights.tiny import ensure_tiny_release  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    thresholds = sorted(set(args.thresholds) | {0.0})
    spec = get_spec("tiny")
    plan = plan_length(rules_for("tiny"), None, None)
    with tempfile.TemporaryDirectory() as scratch:
        layout = layout_for("tiny", Path(scratch))
        ensure_tiny_release(layout, spec)
        stage2 = Pipeline(spec, layout, device=torch.device("cpu")).stage2()
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, spec.llm.codebook_size, (plan.segments * 11,), generator=generator)
        text = stage2.encode_prompt("A snail crawling on green moss.")

        def denoise(threshold: float) -> tuple[torch.Tensor, CacheCounts, float, float]:
            counts = CacheCounts()
            wall, cpu = time.perf_counter(), time.process_time()
            (latents,) = stage2.render_chunks(
                text, codes, plan, seed=1, steps=args.steps, cache=threshold, counts=counts
            )
            return latents, counts, time.perf_counter() - wall, time.process_time() - cpu

        denoise(0.0)  # warm-up
        seconds: dict[float, list[float]] = {threshold: [] for threshold in thresholds}
        cpu_seconds: dict[float, list[float]] = {threshold: [] for threshold in thresholds}
        results: dict[float, tuple[torch.Tensor, CacheCounts]] = {}
        for _ in range(args.repeats):
            for threshold in thresholds:
                latents, counts, took, cpu = denoise(threshold)
                seconds[threshold].append(took)
                cpu_seconds[threshold].append(cpu)
                results[threshold] = (latents, counts)
    exact = results[0.0][0]
    base_wall, base_cpu = statistics.median(seconds[0.0]), statistics.median(cpu_seconds[0.0])
    rows = []
    for threshold in thresholds:
        latents, counts = results[threshold]
        wall, cpu = statistics.median(seconds[threshold]), statistics.median(cpu_seconds[threshold])
        distance = ((latents - exact).abs().mean() / exact.abs().mean()).item()
        rows.append(
            [
                f"{threshold:g}",
                f"{counts.calls}",
                f"{counts.skipped}",
                f"{args.steps / wall:.2f}",
                f"{base_wall / wall:.2f}x",
                f"{base_cpu / cpu:.2f}x",
                f"{distance:.2e}",
            ]
        )
    print(
        f"tiny on CPU, {torch.get_num_threads()} threads, one clip, {args.steps} steps, "
        f"median of {args.repeats} interleaved runs"
    )
    headers = ["cache", "DiT calls", "skipped", "steps/s", "vs 0", "vs 0 (CPU time)", "latents vs exact"]
    print_rows(headers, rows)


if __name__ == "__main__":
    main()
