"""The app's tabs and its app-wide keys, as data: the app binds them, the key list (F12) reads them."""

from __future__ import annotations

from textual.binding import Binding, BindingType

# (tab id, title, key)
TABS = [
    ("generate", "Generate", "f1"),
    ("queue", "Queue", "f2"),
    ("gallery", "Gallery", "f3"),
    ("weights", "Weights", "f4"),
    ("engine", "Engine", "f5"),
]
# the tabs' titles name their keys, so the footer keeps its width for the keys of the tab shown
APP_BINDINGS: list[BindingType] = [
    *(Binding(key, f"show_tab('{tab}')", label, show=False) for tab, label, key in TABS),
    Binding("f12,question_mark", "keys", "Keys"),  # ? types in a text field: F12 works there
    Binding("ctrl+q", "quit", "Quit", priority=True),
]
