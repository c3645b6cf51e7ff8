"""Yes/no and one-line-answer dialogs."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from ..keymap import bindings, key_of

# Yes counts only once the question has been on the screen this long: a key that asks (the Weights tab's
# d, the Engine tab's S) typed by someone who thought they were in the prompt is followed within a tenth
# of a second by the next letter, which may be a y ("ready"); a person reading the question takes longer.
GUARD_S = 0.5


class Confirm(ModalScreen[bool]):
    """A yes/no question; No has the focus, and yes (y, or the Yes button) counts from GUARD_S after it is
    shown: earlier, it rings the bell and the question stays."""

    BINDINGS = bindings("confirm")

    def __init__(self, question: str, yes: str = "Yes"):
        super().__init__()
        self.question, self.yes = question, yes
        self.shown_at: float | None = None  # monotonic seconds of its first frame
        self.purpose = ""  # what it asks for, for a caller that must not ask twice (the app's "quit")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question)
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} ({key_of('confirm', 'answer(True)')})", variant="error", id="yes")
                yield Button(f"No ({key_of('confirm', 'answer(False)')})", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()
        self.call_after_refresh(self.drawn)

    def drawn(self) -> None:
        if self.shown_at is None:
            self.shown_at = time.monotonic()

    @property
    def guarded(self) -> bool:
        """Too soon for a yes: not drawn yet, or drawn less than GUARD_S ago."""
        return self.shown_at is None or time.monotonic() - self.shown_at < GUARD_S

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_answer(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        if yes and self.guarded:
            self.app.bell()
            return
        self.dismiss(yes)


class AskName(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question)
            yield Input(self.value, id="answer")
            yield Static("enter: save   escape: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if name:
            self.dismiss(name)
        else:
            self.notify("a name is needed", severity="warning")

    def action_cancel(self) -> None:
        self.dismiss(None)
