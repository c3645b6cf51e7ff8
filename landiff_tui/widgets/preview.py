"""Frames in the terminal: two pixels per cell with the upper half block (true colour, works over SSH).

A cell shows the upper pixel as its foreground and the lower as its background. Frames of a video are
read at low resolution through ffmpeg (imageio-ffmpeg), never through torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from textual.widgets import Static

if TYPE_CHECKING:  # numpy and Pillow load on the first preview, not at start-up
    import numpy as np
    from PIL import Image
    from textual.timer import Timer

UPPER_HALF = "\u2580"


def fit(width: int, height: int, cells_w: int, cells_h: int) -> tuple[int, int]:
    """The largest pixel size with the image's aspect ratio that fits cells_w x (2 * cells_h) pixels."""
    scale = min(cells_w / width, 2 * cells_h / height)
    return max(1, int(width * scale)), max(2, int(height * scale) // 2 * 2)


class HalfBlocks:
    """A rich renderable of an RGB array [H, W, 3] (H even), one text row per two pixel rows."""

    def __init__(self, pixels: np.ndarray):
        import numpy as np

        if pixels.shape[0] % 2:
            pixels = np.concatenate([pixels, pixels[-1:]])
        self.pixels = pixels

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        top, bottom = self.pixels[0::2], self.pixels[1::2]
        for upper_row, lower_row in zip(top, bottom, strict=True):
            for upper, lower in zip(upper_row, lower_row, strict=True):
                style = Style(color=Color.from_rgb(*upper), bgcolor=Color.from_rgb(*lower))
                yield Segment(UPPER_HALF, style)
            yield Segment.line()

    @classmethod
    def of_image(cls, image: Image.Image, cells_w: int, cells_h: int) -> HalfBlocks:
        import numpy as np
        from PIL import Image

        size = fit(image.width, image.height, cells_w, cells_h)
        return cls(np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR)))


def video_frames(path: Path, cells_w: int, cells_h: int, limit: int = 240) -> list[np.ndarray]:
    """Up to `limit` frames of an mp4, scaled down by ffmpeg to fit the given cells."""
    import imageio_ffmpeg
    import numpy as np

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    source_w, source_h = meta["size"]
    width, height = fit(source_w, source_h, cells_w, cells_h)
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"scale={width}:{height}"])
    next(reader)
    frames = []
    try:
        for raw in reader:
            frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
            if len(frames) >= limit:
                break
    finally:
        reader.close()
    return frames


class FramePreview(Static):
    """A still frame (a PNG) or a looping low-resolution video, sized to the widget."""

    DEFAULT_CSS = "FramePreview { height: auto; min-height: 4; }"

    def __init__(self, *args, cells: tuple[int, int] = (40, 12), **kwargs):
        super().__init__(*args, **kwargs)
        self.cells = cells
        self.frames: list[np.ndarray] = []
        self.index = 0
        self.timer: Timer | None = None

    def show_image(self, path: str | Path | None) -> None:
        self.stop()
        if path is None or not Path(path).is_file():
            self.update("no preview yet")
            return
        from PIL import Image

        try:
            with Image.open(path) as image:
                self.update(HalfBlocks.of_image(image, *self.cells))
        except OSError as error:
            self.update(f"cannot show {path}: {error}")

    def play(self, video: str | Path, fps: float) -> None:
        self.stop()
        try:
            self.frames = video_frames(Path(video), *self.cells)
        except (OSError, RuntimeError, StopIteration) as error:
            self.update(f"cannot play {video}: {error}")
            return
        if not self.frames:
            self.update("the video has no frames")
            return
        self.index = 0
        self.next_frame()
        self.timer = self.set_interval(1 / fps, self.next_frame)

    @property
    def playing(self) -> bool:
        return self.timer is not None

    def next_frame(self) -> None:
        self.update(HalfBlocks(self.frames[self.index]))
        self.index = (self.index + 1) % len(self.frames)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
