"""Frame interpolation benchmark: seconds ffmpeg's minterpolate takes for a clip and for a long video's chunk.

    python bench/interpolate.py              # 480 x 720 frames (the release's): a 49-frame clip, a chunk
    python bench/interpolate.py --size 240x360 --repeat 3

The frames are a smooth texture panning and a square crossing it (motion like a slow camera move, the
kind minterpolate handles); real videos with large or complex motion take longer. It also scores the
in-between frames against the true ones (the scene drawn at 16 fps, every other frame given): PSNR of
minterpolate's, of blending the two neighbours and of repeating the one before. CPU only; not a test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generation.interpolate import ChunkInterpolator, FfmpegMinterpolate  # noqa: E402


def panning(count: int, height: int, width: int, pan: int = 6) -> np.ndarray:
    """A smooth colour texture panning `pan` pixels a frame, with a square moving twice as fast across it."""
    rows, cols = np.mgrid[0:height, 0 : width + pan * count]
    texture = np.stack(
        [
            128 + 80 * np.sin(cols / 23.0) * np.cos(rows / 31.0),
            128 + 80 * np.sin(rows / 17.0 + cols / 41.0),
            128 + 60 * np.cos(cols / 13.0 - rows / 29.0),
        ],
        -1,
    ).astype(np.uint8)
    frames = np.stack([texture[:, pan * index : pan * index + width] for index in range(count)])
    for index in range(count):
        left = (20 + 2 * pan * index) % (width - 64)
        frames[index, height // 3 : height // 3 + 64, left : left + 64] = (240, 220, 40)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="480x720", help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row (the best is shown)")
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))
    frames = panning(49 + 24, height, width)
    print(f"{'what':<24} {'fps':>4} {'frames':>7} {'wall s':>7} {'ffmpeg CPU s':>13}")
    for fps in (16, 24):
        for what, before in (("a 49-frame clip", None), ("a later 24-frame chunk", 49)):
            best = None
            for _ in range(args.repeat):
                stream = ChunkInterpolator(fps, 8)
                if before is None:
                    chunk = frames[:49]
                else:  # the chunk after a clip: interpolated with the clip's last frame
                    stream.push(frames[:before])
                    chunk = frames[before : before + 24]
                started, cpu = time.perf_counter(), child_cpu()
                made = stream.push(chunk, last=True)
                timing = (time.perf_counter() - started, child_cpu() - cpu)
                best = timing if best is None else min(best, timing)
            print(f"{what:<24} {fps:>4} {len(made):>7} {best[0]:>7.2f} {best[1]:>13.2f}")
    in_between_scores(height, width)


def psnr(made: np.ndarray, truth: np.ndarray) -> float:
    error = np.mean((made.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / error))


def in_between_scores(height: int, width: int) -> None:
    """PSNR of each way to make the in-between frames, against the scene drawn at twice the rate."""
    truth = panning(33, height, width, pan=3)
    given = truth[::2]
    odd = truth[1::2]
    ways = {
        "minterpolate (mci)": FfmpegMinterpolate().between(given, 2)[1::2],
        "blend the neighbours": ((given[:-1].astype(np.float64) + given[1:]) / 2).round().astype(np.uint8),
        "repeat the one before": given[:-1],
    }
    print(f"\nin-between frames of {len(given)} given ones vs the true ones, mean PSNR:")
    for name, made in ways.items():
        print(f"  {name:<24} {np.mean([psnr(a, b) for a, b in zip(made, odd, strict=True)]):6.1f} dB")


def child_cpu() -> float:
    """CPU seconds of the finished child processes (the ffmpeg runs): the cost on an idle core."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
