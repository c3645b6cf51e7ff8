"""The tab widget: panes switch by `active` before its strip is there, and the strip, once mounted, follows
and drives them (a click on a tab), with one TabActivated per change."""

from __future__ import annotations

import pytest
from textual.app import App
from textual.containers import Container
from textual.widgets import Static, Tabs

from landiff_tui.widgets.tabbed import TabbedViews

TITLES = {"first": "F1 First", "second": "F2 Second", "third": "F3 Third"}


class Host(App):
    def __init__(self) -> None:
        super().__init__()
        self.shown: list[str] = []

    def compose(self):
        panes = [Container(Static(f"pane {name}"), id=name) for name in TITLES]
        yield TabbedViews(TITLES, *panes, initial="first", id="tabs")

    def on_tabbed_views_tab_activated(self, event: TabbedViews.TabActivated) -> None:
        self.shown.append(event.pane.id or "")


def visible(app: App) -> list[str]:
    return [name for name in TITLES if app.query_one(f"#{name}").display]


async def test_panes_switch_before_the_strip_mounts_and_the_strip_shows_the_pane_chosen():
    app = Host()
    async with app.run_test(size=(60, 12)) as pilot:
        tabbed = app.query_one(TabbedViews)
        assert not app.query(Tabs), "the strip is mounted with the first frame"
        assert tabbed.active == "first" and visible(app) == ["first"]

        tabbed.active = "third"  # as F3 pressed before the strip is there
        await pilot.pause()
        assert visible(app) == ["third"] and app.shown == ["third"]

        await tabbed.mount_strip()
        await pilot.pause()
        assert app.query_one(Tabs).active == "tab-third"
        assert app.shown == ["third"], "mounting the strip announced a change that did not happen"


async def test_a_click_on_the_strip_switches_the_pane_once_and_active_moves_the_strip():
    app = Host()
    async with app.run_test(size=(60, 12)) as pilot:
        tabbed = app.query_one(TabbedViews)
        await tabbed.mount_strip()
        await pilot.pause()

        await pilot.click("#tab-second")
        await pilot.pause()
        assert tabbed.active == "second" and visible(app) == ["second"]
        assert app.shown == ["second"]

        tabbed.active = "first"
        await pilot.pause()
        assert app.query_one(Tabs).active == "tab-first" and visible(app) == ["first"]
        assert app.shown == ["second", "first"]

        tabbed.active = "first"  # already shown: nothing to announce
        await pilot.pause()
        assert app.shown == ["second", "first"]


async def test_an_unknown_tab_is_named_with_the_ones_there_are():
    app = Host()
    async with app.run_test(size=(60, 12)):
        with pytest.raises(ValueError, match="no tab 'fourth'; there are first, second, third"):
            app.query_one(TabbedViews).active = "fourth"
