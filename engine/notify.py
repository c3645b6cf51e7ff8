"""A job's end told on the user's desktop through the terminal: the escape sequence that turns into a desktop
notification in the terminal the user runs (over SSH too: it travels as output), chosen from the
environment, or the bell where no notification escape is known. Shared by the TUI (written through
Textual's driver) and the CLI (`watch`, `submit --wait`). Standard library only: the TUI imports it.

Which terminal gets which (a pure function of the environment, `notification_kind`):

- kitty (TERM=xterm-kitty, or KITTY_WINDOW_ID): its desktop notification protocol, OSC 99, title and body
  in two parts, each base64-encoded (any text survives);
- iTerm2 (TERM_PROGRAM=iTerm.app, ITERM_SESSION_ID, or LC_TERMINAL=iTerm2, which ssh forwards with the
  locale) and WezTerm (TERM_PROGRAM=WezTerm, WEZTERM_PANE): OSC 9, one line of text;
- ghostty (TERM=xterm-ghostty, TERM_PROGRAM=ghostty), foot (TERM=foot*), rxvt-unicode (TERM=rxvt-unicode*)
  and VTE terminals (VTE_VERSION: GNOME Terminal, Tilix...; their OSC 777 comes with the distributions'
  notify patch): OSC 777 `notify`, title and body;
- anything else: the bell (BEL), which most terminals turn into an urgency hint, a tab mark or a sound.

Inside tmux (TMUX set) TERM and TERM_PROGRAM name tmux, so the outer terminal is known by the variables it
left in the environment (KITTY_WINDOW_ID, ITERM_SESSION_ID, LC_TERMINAL, WEZTERM_PANE, VTE_VERSION...), and
the escape is wrapped in tmux's passthrough (`ESC P tmux; ... ESC \\`, each ESC inside doubled), which tmux
forwards only with `set -g allow-passthrough on` (tmux 3.3 or later); the bell needs no wrapping. Inside
GNU screen (STY) only the bell is sent.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

ESC, BEL, ST = "\x1b", "\x07", "\x1b\\"
KITTY, OSC9, OSC777, BELL = "kitty-osc99", "osc9", "osc777", "bell"
MOST_CHARS = 200  # of the body; a notification is a glance, not the whole prompt
# C0 and C1 controls and DEL: one inside the text would end the escape early, or start another
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]+")


def notification_kind(env: Mapping[str, str]) -> str:
    """Which escape the terminal behind this environment turns into a desktop notification."""
    term = env.get("TERM", "")
    program = env.get("TERM_PROGRAM", "")
    if "STY" in env and "TMUX" not in env:  # GNU screen: its passthrough differs; the bell it forwards
        return BELL
    if term == "xterm-kitty" or env.get("KITTY_WINDOW_ID"):
        return KITTY
    if (
        program in ("iTerm.app", "WezTerm")
        or env.get("LC_TERMINAL") == "iTerm2"
        or env.get("ITERM_SESSION_ID")
        or env.get("WEZTERM_PANE")
    ):
        return OSC9
    if (
        term == "xterm-ghostty"
        or program == "ghostty"
        or term.startswith(("foot", "rxvt-unicode"))
        or env.get("VTE_VERSION")
    ):
        return OSC777
    return BELL


def plain(text: str, limit: int | None = None) -> str:
    """`text` without control characters (each run of them one space), cut to `limit` characters."""
    text = CONTROLS.sub(" ", text).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def notification(env: Mapping[str, str], title: str, body: str) -> str:
    """The text to write to the terminal to notify `title` / `body` in the terminal `env` describes."""
    kind = notification_kind(env)
    title, body = plain(title, 80), plain(body, MOST_CHARS)
    if kind == BELL:
        return BEL
    if kind == KITTY:  # d=0: more of it follows; p=body: this part is the body; e=1: base64
        sequence = (
            f"{ESC}]99;i=landiff:d=0:e=1;{encoded(title)}{ST}"
            f"{ESC}]99;i=landiff:d=1:p=body:e=1;{encoded(body)}{ST}"
        )
    elif kind == OSC9:  # one text; ConEmu reads "9;<digits>;" as its own commands: never starts so
        sequence = f"{ESC}]9;{title}: {body}{BEL}" if body else f"{ESC}]9;{title}{BEL}"
    else:  # OSC 777: the fields are ;-separated, so none may hold one
        sequence = f"{ESC}]777;notify;{title.replace(';', ',')};{body.replace(';', ',')}{BEL}"
    return tmux_passthrough(sequence) if env.get("TMUX") else sequence


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def tmux_passthrough(sequence: str) -> str:
    """`sequence` as tmux forwards it to the terminal it runs in (with `allow-passthrough on`)."""
    return f"{ESC}Ptmux;{sequence.replace(ESC, ESC + ESC)}{ST}"
