"""The tabs: panes in a ContentSwitcher under a strip of Textual's Tabs that mounts after the first frame.

Textual's TabbedContent composes its tab strip (six widgets here, with an animated underline) before its
first frame, which is about a tenth of that frame's cost; a user looks at the prompt first. So the first
frame has the switcher with the shown pane and an empty row of the strip's height, and `mount_strip`
fills that row right after it. `active` and `TabActivated` are TabbedContent's, so views read the tab
shown the same way whether the strip is there yet or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from textual.containers import Container
from textual.message import Message
from textual.widget import Widget
from textual.widgets import ContentSwitcher

if TYPE_CHECKING:
    from textual.widgets import Tabs

TAB_ID_PREFIX = "tab-"  # a Tab's id is its pane's, so prefixed: ids are unique in the whole DOM


class TabbedViews(Widget):
    DEFAULT_CSS = """
    TabbedViews { height: 1fr; }
    TabbedViews > .tab-strip { height: 2; }
    TabbedViews > ContentSwitcher { height: 1fr; }
    TabbedViews > ContentSwitcher > .tab-pane { height: 1fr; }
    """

    @dataclass(eq=False)
    class TabActivated(Message):
        """Another pane is shown (by a key, a click on the strip, or `active`)."""

        tabbed: TabbedViews
        pane: Widget

        @property
        def control(self) -> TabbedViews:
            return self.tabbed

    def __init__(self, titles: dict[str, str], *panes: Widget, initial: str, id: str | None = None):
        """`titles`: each pane's id -> its tab's title, in the strip's order; `panes`: one per title, with
        that id."""
        super().__init__(id=id)
        self.titles = titles
        self.initial_panes = panes
        self.initial = initial

    def compose(self):
        yield Container(classes="tab-strip")
        yield ContentSwitcher(*self.initial_panes, initial=self.initial)

    @property
    def switcher(self) -> ContentSwitcher:
        return self.query_one(ContentSwitcher)

    @property
    def active(self) -> str:
        """The id of the pane shown."""
        return self.switcher.current or self.initial

    @active.setter
    def active(self, pane_id: str) -> None:
        if pane_id not in self.titles:
            raise ValueError(f"no tab {pane_id!r}; there are {', '.join(self.titles)}")
        strip = self.query("Tabs")
        if strip:
            cast("Tabs", strip.first()).active = TAB_ID_PREFIX + pane_id
        if pane_id == self.switcher.current:
            return
        self.switcher.current = pane_id
        self.post_message(self.TabActivated(self, self.switcher.get_child_by_id(pane_id)))

    async def mount_strip(self) -> None:
        """The tab strip, into the row kept for it; it shows the pane shown by now."""
        from textual.widgets import Tab, Tabs

        tabs = [Tab(title, id=TAB_ID_PREFIX + pane_id) for pane_id, title in self.titles.items()]
        await self.query_one(".tab-strip").mount(Tabs(*tabs, active=TAB_ID_PREFIX + self.active))

    def on_tabs_tab_activated(self, event) -> None:
        """A tab chosen on the strip (a click, or left/right while it has the focus); Tabs is imported only
        with the strip, hence the handler's name rather than `@on(Tabs.TabActivated)`."""
        event.stop()
        self.active = event.tab.id.removeprefix(TAB_ID_PREFIX)
