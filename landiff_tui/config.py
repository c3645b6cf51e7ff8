"""The user's config.toml (the user config dir, or LANDIFF_CONFIG_DIR) and the Generate form kept between
launches (the data dir: the app's own state, not the user's file).

Read at launch, checked strictly: each unknown table or key, wrong type, unknown action or key name,
key used twice in a scope or unknown theme is one line naming the key and its line in the file
(`config.toml line 7: key 'keys.queue.cancel_job': ... (...)`); a file with any of them is not applied,
the app runs with the defaults and says so. Standard library only (tomllib once a file exists), and no
engine module that the first frame does without.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import paths

NAME = "config.toml"
STATE_NAME = "tui-form.json"
REMEMBER = ("last", "off")  # or "preset:NAME"
THEME_DEFAULT = "textual-dark"

# `landiff-engine serve` options the [engine] table takes (tests/test_config.py holds them to serve's
# parser): the key is the option's name with _ for -, the value a string, a number or true/false
SERVE_OPTIONS: dict[str, type | tuple[str, ...]] = {
    "ckpts": str,
    "idle_release": float,
    "gpus": str,
    "parallel": str,
    "llm_device": str,
    "ray": str,
    "ray_resource": str,
    "on_finish": str,
    "memory": ("auto", "resident", "balanced", "low", "offload"),
    "attention": ("auto", "sdpa", "cudnn", "flash2", "flash3", "sage", "flash"),
    "compile": bool,
    "fuse_qkv": bool,
}
MODELS = ("landiff", "tiny")

# key names Textual understands, besides single characters and f1-f24 (modifiers: ctrl+, shift+, alt+)
NAMED_KEYS = {
    "escape", "enter", "tab", "space", "backspace", "delete", "insert", "home", "end", "pageup",
    "pagedown", "up", "down", "left", "right",
}  # fmt: skip
MODIFIERS = ("ctrl", "shift", "alt")


def config_path() -> Path:
    return paths.config_dir() / NAME


def state_path() -> Path:
    return paths.data_dir() / STATE_NAME


@dataclass
class Config:
    """What config.toml says, the defaults where it says nothing (or is bad: `errors`)."""

    remember: str = "last"  # "last", "off" or "preset:NAME"
    model: str | None = None  # the model an engine the TUI starts serves (--model wins)
    engine_options: list[str] = field(default_factory=list)  # `serve` options (LANDIFF_ENGINE_ARGS wins)
    keys: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    theme: str | None = None
    errors: list[str] = field(default_factory=list)  # one line each; the file was not applied
    # where the form is kept between launches; None: nowhere (an app made by a test or another program)
    state: Path | None = None

    @property
    def preset(self) -> str | None:
        return self.remember.removeprefix("preset:") if self.remember.startswith("preset:") else None


class Bad(Exception):
    def __init__(self, key: str, what: str, fix: str):
        super().__init__(f"key {key!r}: {what} ({fix})")
        self.key, self.what, self.fix = key, what, fix


# finding a key's line (tomllib gives no positions): table headers and `key =` lines, their dotted keys
# read as TOML reads them (bare, "basic" or 'literal' parts)
KEY_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def key_path(text: str, start: int = 0) -> tuple[list[str], int] | None:
    """The dotted key at `start` of `text` and where it ends; None if there is none."""
    parts, at = [], start
    while True:
        match = KEY_PART.match(text, at)
        if match is None or match.end() == at:
            return None
        bare, basic, literal = match.groups()
        part = bare if bare is not None else basic if basic is not None else literal
        if basic is not None:
            part = basic.encode().decode("unicode_escape") if "\\" in basic else basic
        parts.append(part or "")
        at = match.end()
        if text[at : at + 1] != ".":
            return parts, at
        at += 1


def key_lines(source: str) -> list[tuple[list[str], int]]:
    """(the whole dotted key, line number) of each table header and `key = value` line, in order."""
    found: list[tuple[list[str], int]] = []
    table: list[str] = []
    in_string: str | None = None  # inside a multi-line string: its quotes
    for number, line in enumerate(source.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        stripped = line.lstrip()
        if stripped.startswith("["):
            double = stripped.startswith("[[")
            read = key_path(stripped, 2 if double else 1)
            if read is not None:
                table = read[0]
                found.append((table, number))
            continue
        read = key_path(stripped)
        if read is not None and stripped[read[1] : read[1] + 1] == "=":
            found.append((table + read[0], number))
            rest = stripped[read[1] + 1 :]
            for quotes in ('"""', "'''"):
                if rest.count(quotes) % 2:
                    in_string = quotes
    return found


def line_of(source: str, key: list[str]) -> int:
    """The line that sets `key`: its own line, else the line of the nearest table or key above it in the
    path (an inline table, a table header); 1 when nothing matches."""
    lines = key_lines(source)
    for length in range(len(key), 0, -1):
        for path, number in lines:
            if path == key[:length]:
                return number
    return 1


def dotted(key: list[str]) -> str:
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"' for part in key)


def problem(source: str, key: list[str], what: str, fix: str, name: str = NAME) -> str:
    return f"{name} line {line_of(source, key)}: key {dotted(key)!r}: {what} ({fix})"


def key_name_of(text: str) -> str | None:
    """The key as Textual names it ("ctrl+s", "f5", "question_mark", "K"), None when it is none."""
    text = text.strip()
    if len(text) == 1:
        return single(text)
    parts = text.split("+")
    *mods, base = parts if not text.endswith("++") else [*text[:-2].split("+"), "+"]
    mods = [mod.lower() for mod in mods]
    if any(mod not in MODIFIERS for mod in mods) or len(set(mods)) != len(mods) or not base:
        return None
    if len(base) == 1:
        name = single(base.lower() if mods and base.isalpha() else base)
    elif named(base.lower()):
        name = base.lower()
    else:
        return None
    return "+".join([*mods, name]) if name else None


def named(name: str) -> bool:
    """escape, f5, question_mark, full_stop...: a key's name, not its character."""
    return name in NAMED_KEYS or bool(re.fullmatch(r"f([1-9]|1[0-9]|2[0-4])", name)) or unicode_key(name)


def single(char: str) -> str | None:
    """A printable character's key name, as Textual makes it: itself for letters and digits, else a name
    ("?" is question_mark, "/" slash); None for space and control characters (`space` names that key)."""
    from textual.keys import _character_to_key

    if not char.isprintable() or char.isspace():
        return None
    return _character_to_key(char)


def unicode_key(name: str) -> bool:
    """A punctuation key by Textual's name for it ("full_stop", "comma", "slash", "question_mark")."""
    import unicodedata

    from textual.keys import REPLACED_KEYS, _character_to_key, _get_unicode_name_from_key

    try:
        char = unicodedata.lookup(_get_unicode_name_from_key(REPLACED_KEYS.get(name, name)))
    except KeyError:
        return False
    return len(char) == 1 and char.isprintable() and not char.isalnum() and _character_to_key(char) == name


def key_problem(names: Any) -> tuple[tuple[str, ...] | None, str]:
    """The keys a keymap entry gives, as Textual names them, or None and what is wrong."""
    given = [names] if isinstance(names, str) else names
    if not isinstance(given, list) or not given or not all(isinstance(name, str) for name in given):
        return None, 'must be a key or a list of keys, e.g. "ctrl+k" or ["c", "ctrl+k"]'
    made = []
    for name in given:
        key = key_name_of(name)
        if key is None:
            return None, f"{name!r} is no key name Textual knows"
        if key in made:
            return None, f"{name!r} is given twice"
        made.append(key)
    return tuple(made), ""


KEY_FIX = "use a letter, a digit, f1-f24, a name such as escape or question_mark, with ctrl+ / shift+ / alt+"


def parse(source: str, name: str = NAME) -> Config:
    """The config in `source`; a file with problems gives the defaults and its problems (`errors`)."""
    import tomllib

    config, errors = Config(), []
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        said = str(error)
        found = re.search(r"\(at line (\d+), column \d+\)", said)
        line = int(found.group(1)) if found else 1
        said = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", said)
        keys = [path for path, number in key_lines(source) if number == line]
        key = f" key {dotted(keys[0])!r}:" if keys else ""
        fix = 'write it as TOML: key = "text", key = 1, key = ["a", "b"], [table]'
        return Config(errors=[f"{name} line {line}:{key} not TOML: {said[:1].lower()}{said[1:]} ({fix})"])

    def bad(key: list[str], what: str, fix: str) -> None:
        errors.append(problem(source, key, what, fix, name))

    tables = {"form": check_form, "engine": check_engine, "keys": check_keys, "ui": check_ui}
    for table, value in data.items():
        if table not in tables:
            bad([table], "unknown table", f"the tables are {', '.join(f'[{t}]' for t in tables)}")
        elif not isinstance(value, dict):
            bad([table], "must be a table", f"write [{table}] on a line of its own, its keys under it")
        else:
            tables[table](value, config, bad)
    if errors:
        return Config(errors=errors)
    return config


def check_form(table: dict[str, Any], config: Config, bad) -> None:
    for key, value in table.items():
        if key != "remember":
            bad(["form", key], "unknown key", "[form] has remember")
        elif not isinstance(value, str) or not (value in REMEMBER or re.fullmatch(r"preset:.+", value)):
            bad(["form", key], f"{value!r} is no choice", 'use "last", "off" or "preset:NAME"')
        else:
            config.remember = value


def check_engine(table: dict[str, Any], config: Config, bad) -> None:
    for key, value in table.items():
        where = ["engine", key]
        if key == "model":
            if value not in MODELS:
                bad(where, f"{value!r} is no model", f"use {' or '.join(map(repr, MODELS))}")
            else:
                config.model = value
            continue
        kind = SERVE_OPTIONS.get(key)
        option = "--" + key.replace("_", "-")
        if kind is None:
            names = ", ".join(["model", *SERVE_OPTIONS])
            bad(where, "no `landiff-engine serve` option", f"[engine] takes {names}")
        elif kind is bool:
            if not isinstance(value, bool):
                bad(where, "must be true or false", f"true gives {option}, false --no-{option[2:]}")
            else:
                config.engine_options.append(option if value else f"--no-{option[2:]}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                bad(where, f"{value!r} is not a number of seconds", "write a number, e.g. 600")
            else:
                config.engine_options += [option, str(value)]
        elif isinstance(kind, tuple):
            if value not in kind:
                bad(where, f"{value!r} is no choice", f"use one of {', '.join(kind)}")
            else:
                config.engine_options += [option, value]
        elif not isinstance(value, str) or not value:
            bad(where, "must be a string", f'quote it: {key} = "..." (see landiff-engine serve --help)')
        else:
            config.engine_options += [option, value]


def check_keys(table: dict[str, Any], config: Config, bad) -> None:
    from .keymap import DEFAULT_JOB_KEYS, DEFAULT_KEYMAP

    for scope, actions in table.items():
        if scope not in DEFAULT_KEYMAP:
            bad(["keys", scope], "unknown scope", f"the scopes are {', '.join(DEFAULT_KEYMAP)}")
            continue
        if not isinstance(actions, dict):
            bad(["keys", scope], "must be a table", f'write [keys.{scope}] and action = "key" under it')
            continue
        for action, names in actions.items():
            where = ["keys", scope, action]
            if action not in DEFAULT_KEYMAP[scope]:
                known = ", ".join(DEFAULT_KEYMAP[scope])
                bad(where, "unknown action", f"[keys.{scope}] has {known} (F12 lists them)")
                continue
            keys, why = key_problem(names)
            if keys is None:
                bad(where, why, KEY_FIX)
                continue
            other = "detail" if scope == "gallery" else "gallery"
            if action in DEFAULT_JOB_KEYS and scope in ("gallery", "detail"):
                twin = config.keys.get(other, {}).get(action)
                if twin is not None and twin != keys:
                    bad(where, f"differs from keys.{other}.{action}", "a job action has one key in both")
                    continue
            config.keys.setdefault(scope, {})[action] = keys

    # a key used twice in a scope, the defaults with the user's keys in place: the user's entry is named
    def set_in(scope: str, action: str) -> str | None:
        """The scope of config.keys that sets the action's keys in `scope` (a job action: either)."""
        job = scope in ("gallery", "detail") and action in DEFAULT_JOB_KEYS
        for where in ("gallery", "detail") if job else (scope,):
            if action in config.keys.get(where, {}):
                return where
        return None

    for scope, defaults in DEFAULT_KEYMAP.items():
        owner: dict[str, str] = {}
        for action, entry in defaults.items():
            setter = set_in(scope, action)
            names = config.keys[setter][action] if setter else (*entry.keys, *entry.also)
            for key in names:
                if key not in owner:
                    owner[key] = action
                    continue
                blamed, other = (action, owner[key]) if setter else (owner[key], action)
                bad(
                    ["keys", set_in(scope, blamed) or scope, blamed],
                    f"{key!r} is also {other}'s key in [keys.{scope}]",
                    "give one of them another key",
                )


def check_ui(table: dict[str, Any], config: Config, bad) -> None:
    from textual.theme import BUILTIN_THEMES

    for key, value in table.items():
        if key != "theme":
            bad(["ui", key], "unknown key", "[ui] has theme")
        elif value not in BUILTIN_THEMES:
            bad(["ui", key], f"{value!r} is no theme", f"use one of {', '.join(sorted(BUILTIN_THEMES))}")
        else:
            config.theme = value


def load(path: Path | None = None) -> Config:
    """config.toml (default: `config_path()`), the defaults when there is none; the form is kept in the
    data dir."""
    path = path or config_path()
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        config = Config()
    except (OSError, UnicodeDecodeError) as error:
        config = Config(errors=[f"{path} cannot be read: {error} (fix it or remove it)"])
    else:
        config = parse(source, path.name)
    config.state = state_path()
    return config


# the form kept between launches: the fields' texts and the prompt, as the user left them


def load_form(path: Path | None) -> dict[str, Any] | None:
    """{"fields": {name: text}, "prompt": text}, None when none is kept (or it cannot be read: it is
    ours, and only a convenience)."""
    if path is None:
        return None
    import json

    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict):
        return None
    fields, prompt = kept.get("fields"), kept.get("prompt", "")
    if not isinstance(fields, dict) or not isinstance(prompt, str):
        return None
    texts = {str(name): text for name, text in fields.items() if isinstance(text, str)}
    return {"fields": texts, "prompt": prompt}


def save_form(path: Path | None, fields: dict[str, str], prompt: str) -> None:
    if path is None:
        return
    import json

    from engine.atomic import write_atomically

    text = json.dumps({"fields": fields, "prompt": prompt}, indent=1)
    try:
        paths.private_dir(path.parent, "data dir")
        write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))
    except OSError:
        pass  # a read-only data dir: the form is not kept, which costs nothing else
