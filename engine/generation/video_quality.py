"""One video's quality record, with the CLIP under a weights root when it can score.

The engine's probe (`engine/daemon/quality_probe.py`) measures every job's video so; `landiff-engine
generate --quality` measures the video it just wrote the same way. Without usable CLIP weights the CLIP
score is skipped, saying why and how to get them; flicker and motion need no weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.weights.layout import CLIP_FOLDER, CLIP_HINT, CLIP_REPO

if TYPE_CHECKING:
    from engine.generation.quality import Clip


def clip_name(model: str) -> str:
    """What the record calls the CLIP that scores `model`'s videos."""
    from engine.specs import get_spec

    if get_spec(model).random_weights:
        return f"random {model} CLIP in the layout of {CLIP_REPO}"
    return CLIP_REPO


def clip_absence(root: Path) -> str | None:
    """Why the CLIP under the weights root `root` cannot score (absent, incomplete, or a file whose
    check failed), or None when it can."""
    from engine.weights.downloads import VerificationRecord
    from engine.weights.layout import CLIP_FILES

    folder = root / CLIP_FOLDER
    missing = [name for name in CLIP_FILES if not (folder / name).is_file()]
    if len(missing) == len(CLIP_FILES):
        return f"CLIP weights absent ({folder}): {CLIP_HINT}"
    if missing:
        return f"CLIP weights incomplete ({folder} lacks {', '.join(missing)}): {CLIP_HINT}"
    record = VerificationRecord(root)
    failed = [name for name in CLIP_FILES if record.result(root, f"{CLIP_FOLDER}/{name}") is False]
    if failed:
        return f"CLIP file(s) {', '.join(failed)} in {folder} failed their check: {CLIP_HINT} again"
    return None


def measure_video(
    video: Path,
    prompt: str,
    root: Path,
    name: str,
    clip: Clip | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[str, Any], Clip | None]:
    """(the quality record of `video` against `prompt`, the CLIP loaded for the next video or None).

    `clip`: one loaded before (kept while the weights stay usable). A video that cannot be read gives a
    record holding its error, never an exception; ProbeStopped (from `should_stop`) is raised."""
    from engine.generation.quality import ProbeStopped, load_clip, probe_video

    skipped = clip_absence(root)
    if skipped is None and clip is None:
        folder = root / CLIP_FOLDER
        try:
            clip = load_clip(folder, name)
        except Exception as error:  # a damaged folder: say so in the record, measure the rest
            skipped = f"CLIP weights in {folder} did not load ({error}): {CLIP_HINT} again"
    started = time.monotonic()
    try:
        record = probe_video(video, prompt, None if skipped else clip, skipped, should_stop=should_stop)
    except ProbeStopped:
        raise
    except Exception as error:  # an unreadable or vanished video
        record = {"error": f"{type(error).__name__}: {error}", "seconds": time.monotonic() - started}
    return record, None if skipped else clip


def add_to_sidecar(sidecar: Path, record: dict[str, Any]) -> None:
    """The sidecar's `quality` block, written atomically (the rest of the record kept as it is)."""
    import json

    from engine.generation.outputs import write_record

    write_record(sidecar, {**json.loads(sidecar.read_text()), "quality": record})


def measure_into_sidecar(video: Path, sidecar: Path, prompt: str, root: Path, model: str) -> dict[str, Any]:
    """A video just made, measured once (its CLIP loaded for it alone) into its sidecar; the record."""
    record, _ = measure_video(video, prompt, root, clip_name(model))
    add_to_sidecar(sidecar, record)
    return record
