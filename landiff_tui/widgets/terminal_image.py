"""Real pixels where the terminal draws them: the kitty graphics protocol or sixel, through textual-image.

One place decides how frames are drawn (`renderer`): "kitty", "sixel" or "halfblocks". The terminal is asked
once, at start, before Textual takes it over (`detect`, from `app.main`): textual-image asks the terminal
when it is first imported (a sixel query, a kitty graphics query, the size of a cell in pixels; about 0.1 s
each where the terminal does not answer) and once Textual reads the keyboard nothing else may read its
answers. Half blocks stay wherever that did not happen or did not find either protocol: textual-image not
installed (it is the optional `images` extra), no terminal, a headless (test) run, a terminal that answered
neither query.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image
    from textual.app import App
    from textual.widget import Widget

Renderer = Literal["kitty", "sixel", "halfblocks"]

_detected: Renderer | None = None  # what `detect` found; None: not asked (halfblocks)


def _asks_a_terminal() -> bool:
    return all(stream is not None and stream.isatty() for stream in (sys.__stdin__, sys.__stdout__))


# terminals that draw kitty graphics or sixel, as their environment names them (over ssh too: TERM, and
# LC_TERMINAL, which ssh passes on with the locale): only these are asked, so that every other terminal
# starts without the queries' wait
GRAPHICS_TERMS = ("xterm-kitty", "foot", "foot-extra", "mlterm", "wezterm", "xterm-ghostty", "contour")
GRAPHICS_PROGRAMS = ("WezTerm", "iTerm.app", "ghostty", "mintty", "konsole")


def graphics_hinted(env: Mapping[str, str]) -> bool:
    """Whether the environment names a terminal that may draw real pixels (then `detect` asks it)."""
    return bool(
        env.get("KITTY_WINDOW_ID")
        or env.get("WEZTERM_PANE")
        or env.get("TERM", "") in GRAPHICS_TERMS
        or env.get("TERM_PROGRAM", "") in GRAPHICS_PROGRAMS
        or env.get("LC_TERMINAL", "") == "iTerm2"
    )


def detect(tty: bool | None = None) -> Renderer:
    """Ask the terminal (through textual-image) what it draws; only before Textual starts. `tty`: whether
    stdin and stdout are a terminal (default: look)."""
    global _detected
    _detected = _ask_library() if (_asks_a_terminal() if tty is None else tty) else "halfblocks"
    return _detected


def _ask_library() -> Renderer:
    try:
        from textual_image import renderable
        from textual_image import widget as _  # noqa: F401  # measures a cell in pixels, while it still can
    except ImportError:
        return "halfblocks"
    if renderable.Image is renderable.SixelImage:
        return "sixel"
    if renderable.Image is renderable.TGPImage:
        return "kitty"
    return "halfblocks"


def renderer(app: App | None = None) -> Renderer:
    """How frames are drawn in `app`: what `detect` found at start, half blocks in a headless run."""
    if _detected is None or (app is not None and app.is_headless):
        return "halfblocks"
    return _detected


def image_widget(kind: Renderer) -> Widget:
    """textual-image's widget that draws with `kind` ("kitty" or "sixel"), empty."""
    from textual_image.widget import SixelImage, TGPImage

    return TGPImage() if kind == "kitty" else SixelImage()


def set_image(widget: Widget, image: Image.Image | None) -> None:
    """Show `image` in a widget from `image_widget` (None: nothing)."""
    widget.image = image  # type: ignore[attr-defined]  # textual-image's Image widget


def cell_pixels() -> tuple[int, int]:
    """A cell's size in pixels, as textual-image measured it at start (10 x 20 when it could not)."""
    try:
        from textual_image._terminal import get_cell_size
    except ImportError:
        return 10, 20
    size = get_cell_size()
    return size.width, size.height
