"""Frames in the terminal: two pixels per cell with the upper half block (true colour, works over SSH), or
real pixels (kitty graphics protocol, sixel) where the terminal said at start that it draws them
(terminal_image.py).

A half block cell shows the upper pixel as its foreground and the lower as its background. Frames of a video
are read at low resolution through ffmpeg (imageio-ffmpeg), never through torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

if TYPE_CHECKING:  # numpy and Pillow load on the first preview, not at start-up
    import numpy as np
    from PIL import Image
    from textual.timer import Timer
    from textual.visual import VisualType
    from textual.widget import Widget

    from .terminal_image import Renderer

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


def video_frames(
    path: Path, cells_w: int, cells_h: int, limit: int = 240, pixels: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """Up to `limit` frames of an mp4, scaled down by ffmpeg to fit the given cells (two pixels a cell
    vertically, for half blocks; `pixels`: to fit that many pixels instead)."""
    return read_video(path, cells_w, cells_h, limit, pixels)[0]


def read_video(
    path: Path,
    cells_w: int,
    cells_h: int,
    limit: int = 240,
    pixels: tuple[int, int] | None = None,
    keep: set[int] | None = None,
) -> tuple[list[np.ndarray], float]:
    """`video_frames` and the video's frame rate (frames a second); `keep`: only the frames of these indices
    (read past the others, `limit` counting every frame)."""
    import imageio_ffmpeg
    import numpy as np

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    source_w, source_h = meta["size"]
    fps = float(meta.get("fps") or 8.0)
    if pixels is None:
        width, height = fit(source_w, source_h, cells_w, cells_h)
    else:
        width, height = fit(source_w, source_h, pixels[0], max(1, pixels[1] // 2))
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"scale={width}:{height}"])
    next(reader)
    frames = []
    try:
        for index, raw in enumerate(reader):
            if keep is None or index in keep:
                frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
            if index + 1 >= limit:
                break
    finally:
        reader.close()
    return frames, fps


MAX_PIXEL_WIDTH = 320  # a played video's frames at most this wide in real pixels (memory, bytes sent)


def pixel_box(cells_w: int, cells_h: int, max_width: int = MAX_PIXEL_WIDTH) -> tuple[int, int]:
    """The pixels that cells_w x cells_h cells show in this terminal, at most `max_width` wide."""
    from .terminal_image import cell_pixels

    cell_w, cell_h = cell_pixels()
    width, height = cells_w * cell_w, cells_h * cell_h
    scale = min(1.0, max_width / width)
    return max(1, int(width * scale)), max(2, int(height * scale))


class FramePreview(Static):
    """A still frame (a PNG), an RGB array or a looping low-resolution video, sized to the widget: in half
    blocks, or in real pixels through textual-image's widget where `terminal_image.renderer` says so."""

    DEFAULT_CSS = """
    FramePreview { height: auto; min-height: 4; }
    FramePreview.pixels { layout: vertical; }
    FramePreview.pixels > .frame-image { display: none; }
    FramePreview.pixels.picture > .frame-image { display: block; }
    FramePreview.pixels.picture > .frame-text { display: none; }
    FramePreview > .frame-text { height: auto; }
    """

    def __init__(self, *args, cells: tuple[int, int] = (40, 12), renderer: Renderer | None = None, **kwargs):
        """`renderer`: how it draws (default: `terminal_image.renderer`, decided when it is mounted)."""
        super().__init__(*args, **kwargs)
        self.cells = cells
        self.frames: list[np.ndarray] = []
        self.index = 0
        self.timer: Timer | None = None
        self.renderer: Renderer | None = renderer
        self.image: Widget | None = None  # textual-image's widget, drawing real pixels
        self.text: Static | None = None  # the words beside it (real pixels only)

    def compose(self) -> ComposeResult:
        from .terminal_image import image_widget, renderer

        if self.renderer is None:
            self.renderer = renderer(self.app)
        if self.renderer != "halfblocks":  # a child for the words, one for the picture
            self.add_class("pixels")
            self.text = Static(classes="frame-text")
            self.image = image_widget(self.renderer)
            self.image.add_class("frame-image")
            self.image.styles.width, self.image.styles.height = self.cells
            yield self.text
            yield self.image

    @property
    def pixels(self) -> bool:
        """Whether it draws real pixels (kitty or sixel) rather than half blocks."""
        return self.image is not None

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        """Words (or a rich renderable, in half blocks): in place of the picture."""
        if self.text is None:
            super().update(content, layout=layout)
        else:
            self.remove_class("picture")
            self.text.update(content, layout=layout)

    def show_picture(self, image: Image.Image) -> None:
        """A PIL image, fitted to the cells."""
        if self.image is None:
            super().update(HalfBlocks.of_image(image, *self.cells))
            return
        from .terminal_image import set_image

        set_image(self.image, image.convert("RGB"))
        self.add_class("picture")

    def show_pixels(self, pixels: np.ndarray) -> None:
        """An RGB array [H, W, 3], already at the size it is drawn at (half blocks: a cell a pixel wide, two
        pixels high)."""
        if self.image is None:
            super().update(HalfBlocks(pixels))
            return
        from PIL import Image

        self.show_picture(Image.fromarray(pixels))

    def show_image(self, path: str | Path | None) -> None:
        self.stop()
        if path is None or not Path(path).is_file():
            self.update("no preview yet")
            return
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.load()
                self.show_picture(image)
        except OSError as error:
            self.update(f"cannot show {path}: {error}")

    def play(self, video: str | Path, fps: float) -> None:
        self.stop()
        pixels = pixel_box(*self.cells) if self.pixels else None
        try:
            self.frames = video_frames(Path(video), *self.cells, pixels=pixels)
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
        self.show_pixels(self.frames[self.index])
        self.index = (self.index + 1) % len(self.frames)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None


def strip_times(duration_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly from the first frame to the last (no index twice)."""
    if duration_frames <= 0:
        return []
    if count <= 1 or duration_frames == 1:
        return [0]
    last = duration_frames - 1
    return sorted({round(i * last / (count - 1)) for i in range(count)})


class FrameStrip(Horizontal):
    """Frames of a video side by side (the first, the last and evenly between), each with its time: as many
    as the width takes (`MAX_FRAMES` at most), in half blocks or real pixels as `FramePreview` draws."""

    DEFAULT_CSS = """
    FrameStrip { height: auto; }
    FrameStrip > .strip-frame { width: auto; height: auto; margin-right: 1; }
    FrameStrip .strip-time { width: 100%; text-align: center; color: $text-muted; }
    """

    THUMB_CELLS = (14, 5)  # each frame's cells
    MAX_FRAMES = 5

    def __init__(self, *args, renderer: Renderer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.renderer = renderer
        self.total = 0  # the video's frames
        self.frames: dict[int, np.ndarray] = {}  # index -> frame, those a strip of any count shows
        self.fps = 8.0
        self.shown: list[int] = []  # the indices drawn, in order

    def count_for(self, width: int) -> int:
        """How many frames `width` cells take, two at least."""
        return max(2, min(self.MAX_FRAMES, (width + 1) // (self.THUMB_CELLS[0] + 1)))

    def load(self, path: str | Path) -> None:
        """Read the video's frames (small) in a thread and draw the strip once they are in."""
        self.run_worker(lambda: self._read(Path(path)), thread=True, exclusive=True, group="strip")

    def _read(self, path: Path) -> None:
        import imageio_ffmpeg

        from .terminal_image import renderer

        kind = self.renderer or renderer(self.app)
        pixels = pixel_box(*self.THUMB_CELLS, max_width=160) if kind != "halfblocks" else None
        try:
            total, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
            wanted = {i for count in range(2, self.MAX_FRAMES + 1) for i in strip_times(total, count)}
            frames, fps = read_video(path, *self.THUMB_CELLS, limit=total, pixels=pixels, keep=wanted)
        except (OSError, RuntimeError, StopIteration):
            total, wanted, frames, fps = 0, set(), [], 8.0
        picked = dict(zip(sorted(wanted), frames, strict=False))
        self.app.call_from_thread(self.set_frames, picked, total, fps)

    def set_frames(self, frames: dict[int, np.ndarray], total: int, fps: float) -> None:
        self.frames, self.total, self.fps = frames, total, fps
        self.run_worker(self.draw(), exclusive=True, group="strip-draw")

    def on_resize(self) -> None:
        if self.frames and strip_times(self.total, self.count_for(self.size.width)) != self.shown:
            self.run_worker(self.draw(), exclusive=True, group="strip-draw")

    async def draw(self) -> None:
        await self.remove_children()
        width = self.size.width or self.app.size.width
        self.shown = [i for i in strip_times(self.total, self.count_for(width)) if i in self.frames]
        self.display = bool(self.shown)
        pictures = [FramePreview(cells=self.THUMB_CELLS, renderer=self.renderer) for _ in self.shown]
        groups = [
            Vertical(picture, Static(time_words(i / self.fps), classes="strip-time"), classes="strip-frame")
            for picture, i in zip(pictures, self.shown, strict=True)
        ]
        await self.mount_all(groups)
        for picture, index in zip(pictures, self.shown, strict=True):
            picture.show_pixels(self.frames[index])


def time_words(seconds: float) -> str:
    """A time in a video: `0:01.5`."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"
