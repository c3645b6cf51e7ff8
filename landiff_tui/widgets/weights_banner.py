"""The first run's offer when the engine finds no weights for its model: a banner across the top of every
tab, never a dialog.

It appears seconds after launch (once the engine has started and looked), when the user may well be
typing a prompt already; a dialog there would take the letters typed (the d of "dog" once started a 25 GB
download, and the prompt lost the rest). The banner takes no key: typing goes on where it was aimed, and
its buttons are reached like any other widget's (tab / shift+tab, then enter; or a click). Downloading
asks first, with the size; the same choices are in the command palette and the Weights tab.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Static


class WeightsBanner(Vertical):
    @dataclass(eq=False)
    class Chosen(Message):
        """A button was pressed: "download", a model to try instead ("tiny"), or None (later)."""

        choice: str | None

    def __init__(self, root: str):
        super().__init__(id="weights-banner")
        self.root = root

    def compose(self) -> ComposeResult:
        yield Static(self.words(), id="weights-banner-text")
        with Horizontal(id="weights-banner-buttons"):
            yield Button("Download (about 25 GB)", id="banner-download", compact=True, variant="primary")
            yield Button("Try the tiny model (noise videos)", id="banner-tiny", compact=True)
            yield Button("Later", id="banner-later", compact=True)

    def words(self) -> str:
        return f"The LanDiff weights are not (all) in {self.root}"

    def show_root(self, root: str) -> None:
        self.root = root
        self.query_one("#weights-banner-text", Static).update(self.words())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        choice = {"banner-download": "download", "banner-tiny": "tiny"}.get(event.button.id or "")
        self.post_message(self.Chosen(choice))
