"""Stage-1 benchmark: semantic-token sampling and semantic decoding, on random weights.

    python bench/llm.py                 # tiny model on CPU (always), full size too when a GPU is present
    python bench/llm.py --full          # full size only (needs a GPU with ~12 GB free)
    python bench/llm.py --frames 26     # two segments
    python bench/llm.py --ops           # what one decoding step launches, eager and compiled (CPU, bf16)

Prints one table: stage, time, tokens/s (or steps/s), peak memory. Not a test; absolute times only mean
something on a GPU. Ratios (with vs without CFG, cache vs none, the first segment of the longest video
against a one-segment video) are measured side by side in one run. `--ops` counts one decoding step's
launches at the release's block count (tiny widths: a block's launches do not depend on its width), eager
and through torch.compile, as bench/step_ops.py counts them; compiling 24 blocks takes a minute on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Row, peak_memory, print_rows, print_table, timed  # noqa: E402
from step_ops import dispatched, kernel_profile, launches  # noqa: E402

from engine.models.configs import LLMConfig  # noqa: E402
from engine.models.llm import SemanticLM  # noqa: E402
from engine.models.llm_sampler import (  # noqa: E402
    Decoder,
    SamplingCancelled,
    SamplingParams,
    decoding_inputs,
    sample_codes,
    segment_rows,
)
from engine.models.semantic_decoder import SemanticDecoder  # noqa: E402
from engine.models.token_layout import max_segments, token_layout  # noqa: E402
from engine.specs import get_spec  # noqa: E402


def random_semantic_lm(config: LLMConfig, device: torch.device, dtype: torch.dtype) -> SemanticLM:
    with torch.device(device):
        model = SemanticLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    return model.cast_for_inference(dtype).eval()


def bench_sampling(label: str, model: SemanticLM, device: torch.device, frames: int, rows: list[Row]) -> None:
    config = model.config
    text = torch.randn(1, 24, config.text_dim, device=device)
    steps = len(token_layout(config, frames))
    sample_codes(model, text, SamplingParams(num_frames=config.frames_per_segment))  # warm-up
    for cfg, cache in ((7.5, True), (1.0, True), (7.5, False)):
        if not cache and config.hidden_dim > 512:
            continue  # uncached recomputation is quadratic: shown on the tiny model only
        params = SamplingParams(cfg=cfg, num_frames=frames, seed=1)
        _, seconds = timed(device, lambda p=params, c=cache: sample_codes(model, text, p, use_cache=c))
        mode = ("CFG" if params.guidance else "no CFG") + ("" if cache else ", no KV cache")
        rows.append(
            Row(f"{label} LLM sample ({mode})", seconds, f"{steps / seconds:,.1f} tok/s", peak_memory(device))
        )


def first_segment_per_token(
    model: SemanticLM, text: torch.Tensor, device: torch.device, frames: int
) -> float:
    """The median seconds of a token over a video's first segment (a window's capture, once in a while,
    is left out with the median); the job is stopped once that segment is done."""
    config, marks = model.config, []
    segment = segment_rows(config)

    def mark() -> bool:  # called before each token
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
        return len(marks) >= segment

    with contextlib.suppress(SamplingCancelled):
        sample_codes(model, text, SamplingParams(num_frames=frames, seed=1), should_stop=mark)
    return statistics.median(later - earlier for earlier, later in itertools.pairwise(marks))


def bench_long_cache(label: str, model: SemanticLM, device: torch.device, rows: list[Row]) -> None:
    """The first segment of the longest video the model allows against a one-segment video, in turns."""
    config = model.config
    text = torch.randn(1, 24, config.text_dim, device=device)
    longest = max_segments(config) * config.frames_per_segment
    short, long = [], []
    for _ in range(3):
        short.append(first_segment_per_token(model, text, device, config.frames_per_segment))
        long.append(first_segment_per_token(model, text, device, longest))
    one, most = min(short), min(long)
    for name, seconds in ((f"of {max_segments(config)}", most), ("of 1", one)):
        rows.append(
            Row(
                f"{label} LLM 1st segment {name}",
                seconds * segment_rows(config),
                f"{1 / seconds:,.1f} tok/s",
                peak_memory(device),
            )
        )
    print(f"{label}: first segment's time per token, longest video / one segment = {most / one:.2f}")


def bench_decoder(
    label: str, spec_name: str, device: torch.device, dtype: torch.dtype, rows: list[Row]
) -> None:
    config = get_spec(spec_name).decoder
    with torch.device(device):
        decoder = SemanticDecoder(config)
    with torch.no_grad():
        for param in decoder.parameters():
            param.normal_(0, 0.02)
    decoder = decoder.to(dtype).eval()
    count = config.iframe_tokens + (config.frames_per_segment - 1) * config.pframe_tokens
    codes = torch.randint(0, config.codebook_size, (1, count), device=device)
    with torch.no_grad():
        _, seconds = timed(device, lambda: decoder(codes, config.frames_per_segment))
    rows.append(
        Row(f"{label} semantic decode", seconds, f"{count / seconds:,.0f} tok/s", peak_memory(device))
    )


def step_launches(device: torch.device) -> None:
    """One decoding step of a release-depth model (tiny widths, bf16), eager and compiled: the aten ops
    the dispatcher sees (views included), the launches, and how long the compile took."""
    config = replace(get_spec("tiny").llm, num_blocks=LLMConfig().num_blocks)
    model = random_semantic_lm(config, device, torch.bfloat16)
    text = torch.randn(1, 24, config.text_dim, device=device)
    lines = [counted_step(model, text, device, compiled) for compiled in (False, True)]
    print(f"one decoding step, {config.num_blocks} blocks of width {config.hidden_dim}, bf16, {device}")
    print_rows(["step", "aten ops", "launches", "inductor kernels", "compile", "notes"], lines)


@torch.no_grad()
def counted_step(model: SemanticLM, text: torch.Tensor, device: torch.device, compiled: bool) -> list[str]:
    config = model.config
    knobs = SamplingParams(num_frames=config.frames_per_segment, seed=1)
    with kernel_profile():
        prefix, rules, generator = decoding_inputs(model, text, knobs)
        window = segment_rows(config)
        decoder, seconds = timed(
            device, lambda: Decoder(model, prefix, rules, knobs, generator, window, compiled=compiled)
        )
        decoder.step(decoder.rows(0))
        seen = launches(lambda: decoder.step(decoder.rows(1)))
        ops = "n/a (dynamo refuses a dispatch mode)"
        if not compiled:
            ops = f"{sum(dispatched(lambda: decoder.step(decoder.rows(2))).values()):,}"
    kernels = seen.pop("inductor kernels", 0)
    top = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in seen.most_common(4))
    return [
        "compiled" if compiled else "eager",
        ops,
        f"{sum(seen.values()) + kernels:,}",
        f"{kernels}",
        f"{seconds:.1f}s" if compiled else "-",
        f"compiled: {decoder.compiled}; most launched: {top}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full size only")
    parser.add_argument(
        "--frames", type=int, default=None, help="semantic frames (a multiple of the segment)"
    )
    parser.add_argument("--ops", action="store_true", help="only count one decoding step's launches")
    args = parser.parse_args()
    if args.ops:
        step_launches(torch.device("cpu"))
        return
    torch.manual_seed(0)
    rows: list[Row] = []
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    if not args.full:
        cpu = torch.device("cpu")
        tiny = get_spec("tiny")
        model = random_semantic_lm(tiny.llm, cpu, torch.float32)
        frames = args.frames or 10 * tiny.llm.frames_per_segment  # ten segments: long enough to time
        bench_sampling("tiny fp32 CPU", model, cpu, frames, rows)
        bench_long_cache("tiny fp32 CPU", model, cpu, rows)
        bench_decoder("tiny fp32 CPU", "tiny", cpu, torch.float32, rows)
    if gpu is not None:
        full = get_spec("landiff")
        model = random_semantic_lm(full.llm, gpu, torch.bfloat16)
        bench_sampling("full bf16 GPU", model, gpu, args.frames or full.llm.frames_per_segment, rows)
        bench_long_cache("full bf16 GPU", model, gpu, rows)
        del model
        torch.cuda.empty_cache()
        bench_decoder("full bf16 GPU", "landiff", gpu, torch.bfloat16, rows)
    elif args.full:
        parser.error("--full needs a CUDA GPU")
    print_table(rows)


if __name__ == "__main__":
    main()
