"""Stand-ins that are replaced right after the first frame, so that the first frame imports and styles only
what it shows: the Generate tab's prompt and Submit button, not its fields nor the other tabs."""

from __future__ import annotations

from importlib import import_module

from textual.widget import Widget


class Deferred(Widget):
    """Stands in for `widget` until the first frame is out, then takes its place. `textual.lazy.Lazy`
    does the same, but fails when the app quits before: here nothing is mounted then."""

    DEFAULT_CSS = "Deferred { display: none; }"

    def __init__(self, widget: Widget | None = None) -> None:
        super().__init__()
        self.widget = widget

    def make(self) -> Widget:
        return self.widget

    def on_mount(self) -> None:
        self.call_after_refresh(self.load)

    async def load(self) -> None:
        widget = self.make()
        if self.is_attached:
            await self.parent.mount(widget, after=self)
            await self.remove()


class DeferredView(Deferred):
    """A tab's view at `path` ("package.module:Class"), imported after the first frame too."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make(self) -> Widget:
        module, name = self.path.split(":")
        return getattr(import_module(module), name)()
