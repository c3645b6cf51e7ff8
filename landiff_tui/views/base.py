"""What every tab's view shares: the widget that gets the keys, being shown, and engine requests.

The engine's news reaches a view as the messages of `landiff_tui.messages` (`on_job_queued`...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.containers import Vertical

if TYPE_CHECKING:
    from engine.protocol import Exact, LaneState


class View(Vertical):
    DEFAULT_CLASSES = "view"
    FOCUS = ""  # the selector of the widget that gets the keys when the tab is shown
    complete = True  # False while parts it mounts after the first frame are still to come

    def on_mount(self) -> None:
        """A tab chosen before its view mounted (they mount after the first frame) gets it now."""
        tabs = self.app.query("#tabs")  # absent when a view is hosted on its own (a test, another app)
        if not tabs or getattr(tabs.first(), "active", None) == self.parent.id:
            self.call_after_refresh(self.focus_default)
            self.call_after_refresh(self.shown)

    def focus_default(self) -> None:
        if self.FOCUS:
            self.query_one(self.FOCUS).focus()

    def shown(self) -> None:
        pass

    async def call(self, kind: str, **fields: Any) -> Exact | None:
        """The reply model, or None when the engine refused (the app has said why)."""
        return await self.app.call_engine(kind, **fields)


def lane_summary(lane: LaneState) -> str:
    """The LLM lane in a few words (Engine and Queue tabs): "LLM lane cuda:2 making 3f2a9c1b, 1 ahead"."""
    doing = f"making {lane.job_id[:8]}" if lane.job_id else lane.state
    ahead = f", {len(lane.ready)} ahead" if lane.ready else ""
    return f"LLM lane {lane.label} {doing}{ahead}"
