"""The first-run dialog when the engine finds no weights."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class NoWeights(ModalScreen[str | None]):
    """Dismissed with "download", a model to try instead ("tiny"), or None."""

    BINDINGS = [
        Binding("d", "choose('download')", "Download"),
        Binding("t", "choose('tiny')", "Tiny model"),
        Binding("escape", "choose(None)", "Later"),
    ]

    def __init__(self, root: str):
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"The LanDiff weights are not (all) in {self.root}.", classes="title")
            yield Static(
                "Download them (about 25 GB, resumable; the engine keeps downloading if you quit), "
                "or try the whole flow with the tiny model: random toy weights that run on a CPU "
                "and make a noise video."
            )
            with Horizontal(classes="buttons"):
                yield Button("Download (d)", variant="primary", id="download")
                yield Button("Tiny model (t)", id="tiny")
                yield Button("Later (esc)", id="later")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "later" else event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)
