"""config.toml: keys, theme, engine options and the form kept between launches; a bad file is one line per
problem, naming the key and its line, and the app runs with the defaults."""

from __future__ import annotations

import argparse

import pytest

from engine import protocol as p
from landiff_tui import config as user_config
from landiff_tui.app import LanDiffApp
from landiff_tui.keymap import KEYMAP, apply_keys
from landiff_tui.views.queue import QueueView  # bound before the config is applied: it must be rebound

from .harness import mounted, until
from .tui_double import ScriptedLink, job


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDIFF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LANDIFF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LANDIFF_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("LANDIFF_ENGINE_ARGS", raising=False)
    yield
    apply_keys({})  # the keymap as written, for the tests after these


def write_config(text: str) -> user_config.Config:
    path = user_config.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return user_config.load()


def palette_hits(app) -> list[str]:
    from textual.command import CommandList

    found = app.screen.query(CommandList)
    if not found:
        return []
    commands = found.first()
    return [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]


async def test_a_key_from_the_file_is_bound_and_shown_by_the_key_list_and_the_palette():
    config = write_config('[keys.queue]\ncancel_job = "c"\n\n[keys.app]\nkeys = ["f11", "?"]\n')
    assert config.errors == [] and config.keys == {"queue": {"cancel_job": ("c",)}, "app": {"keys": ("f11",
        "question_mark")}}  # fmt: skip
    app = LanDiffApp(link=ScriptedLink([job(0, "queued")]), config=config)
    assert KEYMAP["queue"]["cancel_job"].keys == ("c",)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: len(app.views) == 5 and app.query_one(QueueView).jobs, what="the queue")
        queue = app.query_one(QueueView)
        bound = {key for key, found in queue._bindings.key_to_bindings.items() for b in found
                 if b.action == "cancel_job"}  # fmt: skip
        assert bound == {"c"}
        await pilot.press("f2", "x")  # the old key does nothing now
        assert type(app.screen).__name__ == "Screen"
        await pilot.press("c")  # the new one asks to cancel
        await until(pilot, lambda: type(app.screen).__name__ == "Confirm", what="the question")
        await pilot.press("escape", "f11")
        await until(pilot, lambda: type(app.screen).__name__ == "Keys", what="the key list")
        listed = str(app.screen.query_one("#keys-list").render())
        assert f"  {'c':<16} Cancel job" in listed and f"  {'F11 / ?':<16} Keys" in listed
        await pilot.press("f11")  # the key that opened it closes it
        await until(pilot, lambda: type(app.screen).__name__ != "Keys", what="the key list closed")
        await pilot.press("escape", "ctrl+p", *"cancel a queued")
        await until(pilot, lambda: "Cancel a queued or running job  [c]" in palette_hits(app), what="the hit")


BAD = {
    "unknown table": ("[form]\nremember = 'off'\n\n[keyz]\nx = 1\n", 4, "keyz", "unknown table"),
    "unknown key": ("[form]\nremember = 'last'\nforget = true\n", 3, "form.forget", "unknown key"),
    "wrong type": ("[ui]\ntheme = 'nord'\n[form]\n\nremember = 3\n", 5, "form.remember", "3 is no choice"),
    "engine option": ("[engine]\nidle_release = 60\ngpu = 'all'\n", 3, "engine.gpu", "no `landiff-engine"),
    "engine type": ("[engine]\n\nidle_release = 'ten'\n", 3, "engine.idle_release", "not a number"),
    "unknown scope": ("[keys.qeue]\ncancel_job = 'c'\n", 1, "keys.qeue", "unknown scope"),
    "unknown action": ("[keys.queue]\ncancel_job = 'c'\ncancel = 'z'\n", 3, "keys.queue.cancel", "unknown"),
    "key name": ("[keys.queue]\n\"move_job('up')\" = 'hyper+k'\n", 2, "keys.queue.\"move_job('up')\"", "hy"),
    "key twice": ("[keys.queue]\n# pause\npause_queue = 'x'\n", 3, "keys.queue.pause_queue", "cancel_job's"),
    "dotted key": ("[ui]\n\n[keys]\nqueue.pause_queue = 5", 4, "keys.queue.pause_queue", "must"),
    "theme": ("[ui]\ntheme = 'norde'\n", 2, "ui.theme", "'norde' is no theme"),
    "not toml": ("[ui]\ntheme = nord\n", 2, "ui.theme", "not TOML: invalid value"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_a_bad_file_is_one_line_naming_the_key_and_its_line(case):
    source, line, key, what = BAD[case]
    config = user_config.parse(source)
    assert len(config.errors) == 1, config.errors
    said = config.errors[0]
    assert said.startswith(f"config.toml line {line}: key {key!r}:"), said
    assert what in said and "\n" not in said and said.endswith(")"), said
    assert (config.keys, config.theme, config.remember) == ({}, None, "last")  # nothing of it applied


def test_the_defaults_use_no_key_twice_and_the_file_finds_keys_in_every_toml_shape():
    assert user_config.parse("[keys]\n").errors == []
    source = '[keys]\nqueue = { cancel_job = "c" }\n[keys."gallery"]\n\'rerun\' = "ctrl+n"\n'
    config = user_config.parse(source)
    assert config.keys == {"queue": {"cancel_job": ("c",)}, "gallery": {"rerun": ("ctrl+n",)}}
    assert user_config.line_of(source, ["keys", "queue", "cancel_job"]) == 2  # the inline table's line
    assert user_config.line_of(source, ["keys", "gallery", "rerun"]) == 4
    # a job action is the same key in the Gallery and on the job page
    assert (
        "differs from keys.gallery.rerun"
        in user_config.parse(source + '[keys.detail]\nrerun = "r"\n').errors[0]
    )


async def test_a_bad_file_is_told_in_the_app_which_runs_with_the_defaults():
    config = write_config("[keys.queue]\ncancel_job = 'c'\npause_queue = 'c'\n")
    assert len(config.errors) == 1 and config.errors[0].startswith(
        "config.toml line 3: key 'keys.queue.pause"
    )
    app = LanDiffApp(link=ScriptedLink([job(0)]), config=config)
    async with app.run_test(size=(80, 24)) as pilot:
        told = lambda: any(config.errors[0] in str(n.message) for n in app._notifications)  # noqa: E731
        await until(pilot, told, timeout=10, what="the line, told")
        assert KEYMAP["queue"]["cancel_job"].keys == ("x",)


async def test_the_form_as_left_comes_back_at_the_next_launch_unless_remember_is_off():
    async def launch(config: user_config.Config, change: bool) -> dict[str, str]:
        app = LanDiffApp(link=ScriptedLink([job(0)]), config=config)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(app.views) == 5 and app.link.connected, what="every tab")
            await until(pilot, lambda: app.query_one("#param-seed").value, what="the form")
            view = app.query_one("GenerateView")
            shown = {**view.texts(), "prompt": app.query_one("#prompt").text}
            if change:
                app.query_one("#param-cfg").value = "9"
                app.query_one("#param-seed").value = "1234"
                app.query_one("#param-frames").value = "12s"
                app.query_one("#prompt").load_text("A heron, unsent.")
                await pilot.pause()
            app.exit()
        return shown

    first = await launch(user_config.load(), change=True)
    assert user_config.state_path().is_file()
    again = await launch(user_config.load(), change=False)
    assert again == {**first, "cfg": "9", "seed": "1234", "frames": "12s", "prompt": "A heron, unsent."}
    assert await launch(write_config('[form]\nremember = "off"\n'), change=False) == first  # the defaults


async def test_remember_a_preset_applies_it_once_the_engine_names_its_presets():
    config = write_config('[form]\nremember = "preset:quick draft"\n')
    link = ScriptedLink([job(0)])
    app = LanDiffApp(link=link, config=config)
    async with app.run_test(size=(80, 24)) as pilot:
        applied = lambda: mounted(app, "#param-steps") and app.query_one("#param-steps").value == "20"  # noqa: E731
        await until(pilot, applied, timeout=10, what="the preset's steps")
        assert app.query_one("#preset").value == "quick draft" and link.sent(p.ListPresets)


async def test_the_theme_and_the_engine_options_come_from_the_file(monkeypatch):
    config = write_config('[ui]\ntheme = "nord"\n[engine]\nmodel = "tiny"\ngpus = "0,1"\ncompile = false\n')
    assert config.engine_options == ["--gpus", "0,1", "--no-compile"] and config.model == "tiny"
    app = LanDiffApp(link=ScriptedLink([job(0)]), config=config)
    async with app.run_test(size=(80, 24)):
        assert app.theme == "nord"
    made = LanDiffApp(config=config, autostart=False)  # the link an engine would be started by
    assert made.link.options == ["--gpus", "0,1", "--no-compile"] and made.link.model == "tiny"
    monkeypatch.setenv("LANDIFF_ENGINE_ARGS", "--gpus all")  # the variable wins over the file
    assert LanDiffApp(config=config, autostart=False).link.options is None


def test_the_engine_table_takes_the_serve_options_as_serve_defines_them():
    from engine.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    options = {a.dest: a for a in serve._actions if a.dest not in ("help", "model")}
    assert set(options) == set(user_config.SERVE_OPTIONS)
    for name, kind in user_config.SERVE_OPTIONS.items():
        action = options[name]
        if kind is bool:
            assert isinstance(action, argparse.BooleanOptionalAction), name
        elif isinstance(kind, tuple):
            assert tuple(action.choices or ()) == kind, name
        else:
            assert action.choices is None and (action.type or str) in (kind, user_config.Path), name
