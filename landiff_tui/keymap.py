"""Every key of the app, as data: the app, the tabs' views and the job page bind from `KEYMAP`, the key list
(F12) lists it and the command palette names each entry's key from it, so a key changed here changes
everywhere. Imported by the first frame: nothing here but Textual's `Binding`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class ActionKeys:
    """An action's keys (Textual's names; the palette names the first) and its word in the footer and the
    key list."""

    keys: tuple[str, ...]
    description: str
    footer: bool = True
    priority: bool = False  # the key wins over the focused widget's own use of it (a text field's ctrl+e)
    # more keys for it, out of the footer and without priority: the Gallery's delete key, which the search
    # box keeps for deleting text while it has the focus
    also: tuple[str, ...] = ()


# (tab id, title), in the strip's order; each tab's key is its `show_tab` action's in KEYMAP["app"]
TABS = [
    ("generate", "Generate"),
    ("queue", "Queue"),
    ("gallery", "Gallery"),
    ("weights", "Weights"),
    ("engine", "Engine"),
]


def show_tab(tab: str) -> str:
    """The app's action that shows a tab."""
    return f"show_tab('{tab}')"


# a past job's actions: the same keys in the Gallery's list (where typing goes to the search box, so they
# win over its own uses of them) and on the job's page
JOB_KEYS: dict[str, ActionKeys] = {
    "rerun": ActionKeys(("ctrl+r",), "Re-run", priority=True),
    "edit": ActionKeys(("ctrl+e",), "Edit", priority=True),
    "copy_prompt": ActionKeys(("ctrl+t",), "Copy prompt", footer=False, priority=True),
    "copy_path": ActionKeys(("ctrl+y",), "Copy path", footer=False, priority=True),
    "play": ActionKeys(("ctrl+g",), "Play/stop", footer=False, priority=True),
    "delete": ActionKeys(("ctrl+d",), "Delete", priority=True, also=("delete",)),
}

# scope (the app, a tab's view, the job page, a question) -> action -> its keys; in the footer's order
KEYMAP: dict[str, dict[str, ActionKeys]] = {
    # the tabs' titles name their keys, so the footer keeps its width for the keys of the tab shown
    "app": {
        show_tab("generate"): ActionKeys(("f1",), "Generate", footer=False),
        show_tab("queue"): ActionKeys(("f2",), "Queue", footer=False),
        show_tab("gallery"): ActionKeys(("f3",), "Gallery", footer=False),
        show_tab("weights"): ActionKeys(("f4",), "Weights", footer=False),
        show_tab("engine"): ActionKeys(("f5",), "Engine", footer=False),
        "keys": ActionKeys(("f12", "question_mark"), "Keys"),  # ? types in a text field: F12 works there
        "quit": ActionKeys(("ctrl+q",), "Quit", priority=True),
    },
    "generate": {
        "submit": ActionKeys(("ctrl+s",), "Submit"),
        "random_seed": ActionKeys(("ctrl+r",), "Random seed"),
        "save_preset": ActionKeys(("ctrl+o",), "Save preset"),
        "delete_preset": ActionKeys(("ctrl+b",), "Delete preset", footer=False),
    },
    "queue": {
        "cancel_job": ActionKeys(("x",), "Cancel job"),
        "move_job('up')": ActionKeys(("shift+up",), "Move the job up", footer=False, also=("K",)),
        "move_job('down')": ActionKeys(("shift+down",), "Move the job down", footer=False, also=("J",)),
        "move_job('top')": ActionKeys(("t",), "Run the job next", footer=False),
        "pause_queue": ActionKeys(("p",), "Pause/resume"),
    },
    # the Gallery's search box has the keys when the tab shows, so its job actions take keys that text
    # never produces, and win over the box's own ctrl+e (end) and ctrl+d (delete right), which have the end
    # and delete keys; in the list (down from the box), letters move, sort and mark, and none of them
    # changes a job: re-run and delete act on the marked jobs when some are, and delete asks first
    "gallery": {
        "open": ActionKeys(("enter",), "Details", footer=False),
        **JOB_KEYS,
        "focus_search": ActionKeys(("slash",), "Search", footer=False),
        "sort": ActionKeys(("s",), "Sort by the next column", footer=False),
        "reverse": ActionKeys(("S",), "Reverse the order", footer=False),
        "mark": ActionKeys(("space",), "Mark/unmark the job", footer=False),
        "mark_all": ActionKeys(("ctrl+a",), "Mark all/none", footer=False),
        "clear": ActionKeys(("escape",), "Clear the marks, else the search", footer=False),
    },
    "weights": {
        "download": ActionKeys(("d",), "Download"),
        "download('modelscope')": ActionKeys(("D",), "Download from ModelScope", footer=False),
        "verify": ActionKeys(("v",), "Verify"),
        "cancel": ActionKeys(("x",), "Cancel"),
        "refresh": ActionKeys(("r",), "Refresh"),
    },
    "engine": {
        "restart": ActionKeys(("R",), "Start/restart"),
        "stop": ActionKeys(("S",), "Stop"),
        "release": ActionKeys(("m",), "Release"),
        "refresh": ActionKeys(("r",), "Refresh"),
    },
    # every list (the Queue's jobs, the Gallery's), as lazygit and k9s move in theirs; bound by the lists
    # themselves (`widgets.lists.ListTable`), so a text field beside them keeps its letters
    "list": {
        "row('down')": ActionKeys(("j",), "Next row", footer=False),
        "row('up')": ActionKeys(("k",), "Previous row", footer=False),
        "row('first')": ActionKeys(("g",), "First row", footer=False),
        "row('last')": ActionKeys(("G",), "Last row (the Gallery loads more)", footer=False),
    },
    # a job's page: the Gallery's keys for the same actions (its footer has room for playing too)
    "detail": {
        "app.pop_screen": ActionKeys(("escape", "q"), "Back"),
        **{name: replace(keys, footer=keys.footer or name == "play") for name, keys in JOB_KEYS.items()},
    },
    # a question (delete, download, stop, quit...): yes counts only once the question has been on the
    # screen a moment (`screens.confirm.GUARD_S`), so a y typed on with the key that asked is not an answer
    "confirm": {
        "answer(True)": ActionKeys(("y",), "Yes (a moment after it asks)"),
        "answer(False)": ActionKeys(("n", "escape"), "No"),
    },
}

# Textual binds it itself (App.COMMAND_PALETTE_BINDING): listed, not in KEYMAP
PALETTE = ActionKeys(("ctrl+p",), "command palette")

# keys the widgets handle themselves, listed beside the bound ones
WIDGET_KEYS: dict[str, list[tuple[str, str]]] = {
    "generate": [
        ("up / down", "earlier prompts (first / last line)"),
        ("tab / shift+tab", "the next / previous field"),
    ],
    "queue": [("up / down", "choose a job")],
    "gallery": [
        ("type", "search prompts (the search box has the keys when the tab shows)"),
        ("down / up", "the list / the search box (up on the first row)"),
        (
            "click a header",
            "sort by it; again: the other way (created: by the engine, the rest: loaded jobs)",
        ),
    ],
    "engine": [("up / down / pgup / pgdn / end", "scroll the log; at its end it follows new lines")],
    "confirm": [("tab / enter", "choose a button / press it")],
}


def made_bindings(scope: str) -> list[BindingType]:
    made: list[BindingType] = []
    for action, keys in KEYMAP[scope].items():
        made.append(
            Binding(",".join(keys.keys), action, keys.description, show=keys.footer, priority=keys.priority)
        )
        if keys.also:
            made.append(Binding(",".join(keys.also), action, keys.description, show=False))
    return made


# every list `bindings` gave a class, by scope: the user's keys (config.toml) are bound by remaking them
BOUND: list[tuple[str, list[BindingType]]] = []


def bindings(scope: str) -> list[BindingType]:
    """The bindings of a scope of KEYMAP, for a class's BINDINGS."""
    made = made_bindings(scope)
    BOUND.append((scope, made))
    return made


# the keymap as written above, and the user's keys applied to it now (`apply_keys`)
DEFAULT_KEYMAP = {scope: dict(actions) for scope, actions in KEYMAP.items()}
DEFAULT_JOB_KEYS = dict(JOB_KEYS)
applied: dict[str, dict[str, tuple[str, ...]]] = {}


def apply_keys(keys: dict[str, dict[str, tuple[str, ...]]]) -> None:
    """The user's keys (scope -> action -> keys, checked by `landiff_tui.config`) in place of the defaults:
    they replace an action's keys, its extra ones (`also`) too; {} brings the defaults back. KEYMAP changes
    in place, so the key list, the palette and the hints read them, and every class that bound a scope
    with `bindings` binds them: its list is remade, and Textual's merged bindings of that class and of its
    subclasses with it (a widget made after this takes them). A job action set in the Gallery or on the job
    page is set in both (one key for one action)."""
    global applied
    if keys == applied:
        return
    for scope, entries in DEFAULT_KEYMAP.items():
        KEYMAP[scope].clear()
        KEYMAP[scope].update(entries)
    JOB_KEYS.clear()
    JOB_KEYS.update(DEFAULT_JOB_KEYS)
    for scope, given in keys.items():
        for action, names in given.items():
            shared = ("gallery", "detail") if scope in ("gallery", "detail") and action in JOB_KEYS else ()
            for target in shared or (scope,):
                KEYMAP[target][action] = replace(KEYMAP[target][action], keys=names, also=())
            if shared:
                JOB_KEYS[action] = replace(JOB_KEYS[action], keys=names, also=())
    applied = {scope: dict(given) for scope, given in keys.items()}
    remade = set()
    for scope, made in BOUND:
        made[:] = made_bindings(scope)
        remade.add(id(made))
    from textual.dom import DOMNode

    def rebind(cls: type[DOMNode]) -> None:
        if any(id(base.__dict__.get("BINDINGS")) in remade for base in cls.__mro__):
            cls._merged_bindings = cls._merge_bindings()
        for subclass in cls.__subclasses__():
            rebind(subclass)

    rebind(DOMNode)


NAMES = {"question_mark": "?", "slash": "/", "escape": "esc", "delete": "del", "space": "space"}


def key_name(key: str) -> str:
    """A key as the key list and the palette show it: "F5", "?", "ctrl+s"."""
    key = NAMES.get(key, key)
    return key.upper() if key[:1] == "f" and key[1:].isdigit() else key


def all_key_names(keys: ActionKeys) -> str:
    return " / ".join(key_name(key) for key in (*keys.keys, *keys.also))


def key_of(scope: str, action: str) -> str:
    """The name of an action's first key, for the hints that name it: key_of("engine", "restart") is "R"."""
    return key_name(KEYMAP[scope][action].keys[0])


def tab_key(tab: str) -> str:
    """A tab's key by name: "F3"."""
    return key_of("app", show_tab(tab))
