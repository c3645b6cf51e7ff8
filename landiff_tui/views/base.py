"""What every tab's view gets from the app: engine events, connection changes, being shown."""

from __future__ import annotations

from typing import Any

from textual.containers import Vertical


class View(Vertical):
    DEFAULT_CLASSES = "view"
    FOCUS = ""  # the selector of the widget that gets the keys when the tab is shown

    def focus_default(self) -> None:
        if self.FOCUS:
            self.query_one(self.FOCUS).focus()

    def engine_event(self, event: dict[str, Any]) -> None:
        pass

    def engine_connected(self, hello: dict[str, Any]) -> None:
        pass

    def engine_lost(self, state: str) -> None:
        pass

    def shown(self) -> None:
        pass

    async def call(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        return await self.app.call_engine(kind, **fields)
