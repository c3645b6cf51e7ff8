"""What every tab's view shares: the widget that gets the keys, being shown, and engine requests.

The engine's news reaches a view as the messages of `landiff_tui.messages` (`on_job_queued`...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from textual.containers import Vertical

if TYPE_CHECKING:
    from textual.app import App

    from engine.protocol import LaneState, R, Request

    from ..client import EngineLink

Q = TypeVar("Q", bound="Request[Any]")


class EngineApp(Protocol):
    """What the views and the job page use of the app (landiff_tui.app.LanDiffApp), named here so that they
    import nothing of it (it imports them)."""

    link: EngineLink

    def action_show_tab(self, tab: str) -> None: ...
    async def call_engine(self, request: Request[R]) -> R | None: ...
    async def restart_engine(self, model: str | None = None) -> None: ...


def engine_app(app: App[Any]) -> EngineApp:
    """`app` as what the views and the job page use of it: they run in a LanDiffApp."""
    return cast(EngineApp, app)


def checked(app: App[Any], make: Callable[[], Q]) -> Q | None:
    """A request made from what the user gave (the form, a past job's parameters, a name typed), or None
    when that makes none: the app says why, in the words the engine would have refused it with."""
    from pydantic import ValidationError

    from engine.protocol import describe_validation

    try:
        return make()
    except ValidationError as error:
        app.notify(describe_validation(error), title="not sent", severity="error", timeout=10)
        return None


class View(Vertical):
    DEFAULT_CLASSES = "view"
    FOCUS = ""  # the selector of the widget that gets the keys when the tab is shown

    @property
    def complete(self) -> bool:
        """False while parts it mounts after the first frame are still to come."""
        return True

    def on_mount(self) -> None:
        """A tab chosen before its view mounted (they mount after the first frame) gets it now."""
        tabs = self.app.query("#tabs")  # absent when a view is hosted on its own (a test, another app)
        assert self.parent is not None
        if not tabs or getattr(tabs.first(), "active", None) == self.parent.id:
            self.call_after_refresh(self.focus_default)
            self.call_after_refresh(self.shown)

    def focus_default(self) -> None:
        if self.FOCUS:
            self.query_one(self.FOCUS).focus()

    def shown(self) -> None:
        pass

    async def call(self, request: Request[R]) -> R | None:
        """The reply model, or None when the engine refused (the app has said why)."""
        return await self.engine_app.call_engine(request)

    @property
    def engine_app(self) -> EngineApp:
        return engine_app(self.app)


def lane_summary(lane: LaneState) -> str:
    """The LLM lane in a few words (Engine and Queue tabs): "LLM lane cuda:2 making 3f2a9c1b, 1 ahead"."""
    doing = f"making {lane.job_id[:8]}" if lane.job_id else lane.state
    ahead = f", {len(lane.ready)} ahead" if lane.ready else ""
    return f"LLM lane {lane.label} {doing}{ahead}"
