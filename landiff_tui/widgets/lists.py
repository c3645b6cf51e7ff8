"""A list of the app (the Queue's jobs, the Gallery's): a table with a row cursor that moves with the list
keys of the keymap (j/k, g/G) as well as the arrows."""

from __future__ import annotations

from typing import Literal

from textual.widgets import DataTable

from ..keymap import bindings


class ListTable(DataTable):
    BINDINGS = bindings("list")

    def action_row(self, where: Literal["down", "up", "first", "last"]) -> None:
        """The cursor one row down or up, or on the first or last row; it stays in the list (the Gallery's
        up on its first row goes to the search box: its k does not)."""
        if not self.row_count:
            return
        row = {"down": self.cursor_row + 1, "up": self.cursor_row - 1, "first": 0, "last": self.row_count - 1}
        self.move_cursor(row=max(0, min(row[where], self.row_count - 1)))
