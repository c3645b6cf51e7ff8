"""The quality probe's cost on the CPU: read-back, flicker and motion, CLIP scores.

A video of random-walk frames at the release's size (720x480, 8 fps) is written once per length; the
probe runs on it with the tiny random CLIP, with a random CLIP of ViT-B/32's sizes (what
openai/clip-vit-base-patch32 costs; its weights are not needed for timing), and without CLIP.

    python bench/quality.py [--frames 49 241] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generation.quality import load_clip, probe_video  # noqa: E402
from engine.generation.video import write_mp4  # noqa: E402
from engine.weights.random_weights import save_atomically  # noqa: E402
from engine.weights.tiny_clip import tiny_vocabulary, write_tiny_clip  # noqa: E402


def video(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (480 // 8, 720 // 8, 3)).astype(np.float32)
    clip = np.empty((frames, 480, 720, 3), dtype=np.uint8)
    for t in range(frames):
        picture = np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255)
        clip[t] = np.kron(picture, np.ones((8, 8, 1))).astype(np.uint8)
    return write_mp4(clip, path, fps=8)


def base_sized_clip(folder: Path, tiny: Path) -> Path:
    """ViT-B/32's sizes (transformers' CLIPConfig defaults), random weights, the tiny tokenizer files."""
    from transformers import CLIPConfig, CLIPModel

    shutil.copytree(tiny, folder)
    vocab = len(tiny_vocabulary())
    text = {"vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1}
    text["pad_token_id"] = vocab - 1
    config = CLIPConfig(text_config=text, vision_config={"image_size": 224, "patch_size": 32})
    (folder / "config.json").write_text(config.to_json_string())
    save_atomically(CLIPModel(config).state_dict(), folder / "model.safetensors")
    processor = json.loads((tiny / "preprocessor_config.json").read_text())
    processor |= {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[49, 241])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads")
    prompt = "A red fox running through a snowy forest, cinematic lighting."
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_tiny_clip(root / "tiny")
        clips = {
            "no CLIP": None,
            "tiny random CLIP": load_clip(root / "tiny", "tiny"),
            "ViT-B/32-sized CLIP": load_clip(base_sized_clip(root / "base", root / "tiny"), "base"),
        }
        for frames in args.frames:
            path = video(root / f"video-{frames}.mp4", frames)
            for name, clip in clips.items():
                start = time.perf_counter()
                record = probe_video(path, prompt, clip, None if clip else "no CLIP")
                seconds = time.perf_counter() - start
                scored = len(record["clip"]["scores"]) if record["clip"] else 0
                print(
                    f"{frames:5d} frames 720x480  {name:<20} {seconds:6.2f} s  "
                    f"({scored} scored; flicker {record['flicker']:.2f}, motion {record['motion']:.2f})"
                )


if __name__ == "__main__":
    main()
