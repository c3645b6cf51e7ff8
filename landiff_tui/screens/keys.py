"""Every key of every tab on one page (`?` or F12), the tab being shown first, then the job's page, the
questions and the keys that work everywhere: read from the keymap, so it lists every key bound."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..keymap import KEYMAP, PALETTE, TABS, WIDGET_KEYS, all_key_names, key_of


def sections() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(scope, title, [(keys, what)]) for every tab, the job detail, the questions and the whole app."""

    def rows(scope: str) -> list[tuple[str, str]]:
        bound = [*KEYMAP[scope].values(), *([PALETTE] if scope == "app" else [])]
        notes = []
        if scope == "gallery":  # the job keys that act on the marked jobs, when some are
            notes.append(
                (
                    f"{key_of('gallery', 'rerun')} / {key_of('gallery', 'delete')}",
                    "with jobs marked: re-run / delete all of them (asks first)",
                )
            )
        return [
            *WIDGET_KEYS.get(scope, []),
            *((all_key_names(keys), keys.description) for keys in bound),
            *notes,
        ]

    result = [(tab, label, rows(tab)) for tab, label in TABS]
    result.append(("list", "Lists (Queue, Gallery, Weights)", rows("list")))
    result.append(("detail", f"Job detail ({key_of('gallery', 'open')} in the Gallery)", rows("detail")))
    result.append(("confirm", "Questions (delete, download, stop, quit...)", rows("confirm")))
    result.append(("app", "Everywhere", rows("app")))
    return result


class Keys(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def on_key(self, event: events.Key) -> None:
        """The key that opened the list closes it, as the keymap has it now (config.toml may move it)."""
        if event.key in KEYMAP["app"]["keys"].keys:
            event.stop()
            self.dismiss()

    def __init__(self, tab: str = "generate"):
        super().__init__()
        self.tab = tab

    def compose(self) -> ComposeResult:
        ordered = sorted(sections(), key=lambda section: section[0] != self.tab)
        lines = []
        for _, title, keys in ordered:
            lines.append(f"[b]{title}[/b]")
            lines += [f"  {names:<16} {what}" for names, what in keys]
            lines.append("")
        with Vertical(classes="dialog keys"):
            with VerticalScroll():
                yield Static("\n".join(lines), id="keys-list")
            yield Static("escape: close", classes="hint")
