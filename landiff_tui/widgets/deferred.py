"""What the first frame does not show comes right after it, so that the first frame imports, styles and lays
out only what it shows: the Generate tab's prompt and Submit button, not its fields, the header, the tab
strip, the footer nor the other tabs.

Nothing stands in for what comes later (a stand-in widget costs the first frame its styling and mounting
too): the other tabs' panes, and the rows of the header and the tab strip, are empty containers until
they are filled (`mount_later_view`, `LanDiffApp.mount_later`), the Generate form mounts its fields itself,
and the style sheet's rules for the rest (later.tcss) are added by `add_later_css`.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from textual.app import App
from textual.widget import Widget

LATER_CSS = Path(__file__).resolve().parents[1] / "later.tcss"


def add_later_css(app: App) -> None:
    """Adds later.tcss to the app's style sheet, once; it is parsed when next used. Its rules match only
    what mounts after the first frame, so nothing mounted before needs styling again."""
    path = str(LATER_CSS)
    if not app.stylesheet.has_source(path):
        app.stylesheet.add_source(LATER_CSS.read_text(encoding="utf-8"), read_from=(path, ""))


def make_view(path: str) -> Widget:
    """A tab's view from "package.module:Class", imported now."""
    module, name = path.split(":")
    return getattr(import_module(module), name)()


async def mount_later_view(pane: Widget, path: str) -> None:
    """Mounts the view at `path` into its (empty) tab pane; nothing when the pane went away (the app quit
    before its first frame was followed up)."""
    if pane.is_attached:
        await pane.mount(make_view(path))
