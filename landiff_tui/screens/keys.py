"""Every key of every tab on one page (`?` or F12), the tab being shown first."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..keymap import APP_BINDINGS, TABS

NAMES = {"question_mark": "?", "slash": "/", "escape": "esc", "delete": "del"}


def key_names(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    keys = []
    for key in binding.key.split(","):
        key = NAMES.get(key.strip(), key.strip())
        keys.append(key.upper() if key[:1] == "f" and key[1:].isdigit() else key)
    return " / ".join(keys)


def sections() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(tab id, title, [(keys, what)]) for every tab, the job detail and the whole app."""
    from ..views.engine_view import EngineView
    from ..views.gallery import GalleryView
    from ..views.generate import GenerateView
    from ..views.queue import QueueView
    from ..views.weights import WeightsView
    from .job_detail import JobDetail

    def rows(bindings: list[BindingType], extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        described = [b for b in bindings if isinstance(b, Binding) and b.description]
        return [*extra, *((key_names(b), b.description) for b in described)]

    views = {
        "generate": (GenerateView, [("up / down", "earlier prompts (first / last line)")]),
        "queue": (QueueView, [("up / down", "choose a job")]),
        "gallery": (GalleryView, [("type", "search prompts"), ("down / up", "the list / the search box")]),
        "weights": (WeightsView, []),
        "engine": (EngineView, []),
    }
    result = []
    for tab, label, _ in TABS:
        view, extra = views[tab]
        result.append((tab, label, rows(view.BINDINGS, extra)))
    result.append(("detail", "Job detail (enter in the Gallery)", rows(JobDetail.BINDINGS)))
    everywhere = [(key.upper(), label) for _, label, key in TABS] + [("ctrl+p", "command palette")]
    result.append(("app", "Everywhere", rows(APP_BINDINGS[len(TABS) :], everywhere)))
    return result


class Keys(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f12", "dismiss", "Close")]

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
