"""A job's end told on the desktop through the terminal (issue 28): the escape each terminal gets
(engine/notify.py), and the TUI sending it when a job it saw finishes or fails (landiff_tui/notify.py)."""

from __future__ import annotations

import base64
import io
import re

import pytest

from engine.cli import output
from engine.notify import BEL, notification, notification_kind
from landiff_tui import notify as tui_notify
from landiff_tui.app import LanDiffApp

from .harness import until
from .tui_double import ScriptedLink, job

ESC = "\x1b"
KITTY_PART = re.compile(r"\x1b\]99;([^;]*);([^\x1b]*)\x1b\\")


def kitty_parts(sequence: str) -> list[tuple[dict[str, str], str]]:
    """Each OSC 99 part as (its metadata, its decoded payload)."""
    parts = []
    for metadata, payload in KITTY_PART.findall(sequence):
        fields = dict(item.split("=", 1) for item in metadata.split(":"))
        parts.append((fields, base64.b64decode(payload).decode() if fields.get("e") == "1" else payload))
    return parts


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"TERM": "xterm-kitty"}, "kitty-osc99"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, "kitty-osc99"),
        ({"TERM_PROGRAM": "iTerm.app"}, "osc9"),
        ({"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, "osc9"),  # over ssh: the locale's variables
        ({"TERM_PROGRAM": "WezTerm"}, "osc9"),
        ({"TERM": "xterm-ghostty"}, "osc777"),
        ({"TERM": "foot"}, "osc777"),
        ({"TERM": "rxvt-unicode-256color"}, "osc777"),
        ({"TERM": "xterm-256color", "VTE_VERSION": "7600"}, "osc777"),
        ({"TERM": "xterm-256color"}, "bell"),
        ({"TERM": "screen", "STY": "1.pts-0", "KITTY_WINDOW_ID": "1"}, "bell"),
        ({}, "bell"),
    ],
)
def test_each_terminal_gets_the_escape_it_turns_into_a_notification(env, kind):
    assert notification_kind(env) == kind


def test_the_sequences_carry_title_and_body_and_no_control_character_gets_through():
    body = "A fox;\ttabs\x1b]52;c;evil\x07 and\nlines"
    kitty = notification({"TERM": "xterm-kitty"}, "LanDiff: video ready", body)
    parts = kitty_parts(kitty)
    assert [fields.get("p", "title") for fields, _ in parts] == ["title", "body"]
    assert parts[0][0]["d"] == "0" and parts[1][0]["d"] == "1"  # the title waits for the body
    assert parts[0][1] == "LanDiff: video ready"
    assert parts[1][1] == "A fox; tabs ]52;c;evil  and lines"
    osc9 = notification({"TERM_PROGRAM": "iTerm.app"}, "LanDiff: video ready", body)
    assert osc9 == f"{ESC}]9;LanDiff: video ready: A fox; tabs ]52;c;evil  and lines{BEL}"
    osc777 = notification({"TERM": "foot"}, "Lan;Diff", body)
    assert osc777 == f"{ESC}]777;notify;Lan,Diff;A fox, tabs ]52,c,evil  and lines{BEL}"
    assert notification({"TERM": "xterm"}, "LanDiff", body) == BEL
    long = notification({"TERM_PROGRAM": "WezTerm"}, "t", "x" * 1000)
    assert len(long) < 250 and long.endswith(f"…{BEL}")


def test_inside_tmux_the_escape_goes_through_its_passthrough_and_the_bell_as_it_is(tmp_path):
    # TMUX names the server's socket; only its presence counts, so any path stands in for it
    env = {"TMUX": f"{tmp_path}/default,1,0", "TERM": "tmux-256color", "TERM_PROGRAM": "tmux"}
    plain = notification({"TERM_PROGRAM": "iTerm.app"}, "LanDiff", "done")
    wrapped = notification({**env, "LC_TERMINAL": "iTerm2"}, "LanDiff", "done")
    assert wrapped == f"{ESC}Ptmux;{plain.replace(ESC, ESC + ESC)}{ESC}\\"
    kitty = notification({**env, "KITTY_WINDOW_ID": "1"}, "LanDiff", "done")
    assert kitty.startswith(f"{ESC}Ptmux;{ESC}{ESC}]99;") and kitty.count(f"{ESC}Ptmux;") == 1
    inner = kitty.removeprefix(f"{ESC}Ptmux;").removesuffix(f"{ESC}\\").replace(ESC + ESC, ESC)
    assert [text for _, text in kitty_parts(inner)] == ["LanDiff", "done"]
    assert notification(env, "LanDiff", "done") == BEL  # no outer terminal known: the bell, unwrapped


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("err_tty", "out_tty", "written_to"), [(1, 1, "err"), (0, 1, "out"), (0, 0, None)])
def test_the_cli_writes_it_only_to_a_terminal_never_into_piped_output(
    monkeypatch, err_tty, out_tty, written_to
):
    streams = {"err": Stream(bool(err_tty)), "out": Stream(bool(out_tty))}
    monkeypatch.setattr("sys.stderr", streams["err"])
    monkeypatch.setattr("sys.stdout", streams["out"])
    monkeypatch.setenv("TERM_PROGRAM", "iTerm.app")
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.delenv("STY", raising=False)
    assert output.notify_terminal("LanDiff: job finished", "ab12cd34 a fox") == (written_to is not None)
    for name, stream in streams.items():
        expected = f"{ESC}]9;LanDiff: job finished: ab12cd34 a fox{BEL}" if name == written_to else ""
        assert stream.getvalue() == expected


def toasts(app: LanDiffApp, text: str) -> int:
    """The app's own notifications (its toasts, which stay as they were) holding `text`."""
    return sum(text in str(notice.message) for notice in app._notifications)


@pytest.fixture
def written(monkeypatch) -> list[str]:
    """What the app writes to its terminal, with the environment of a kitty window."""
    sent: list[str] = []
    monkeypatch.setattr(tui_notify, "write_to_terminal", lambda app, text: sent.append(text))
    monkeypatch.setenv("TERM", "xterm-kitty")
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.delenv("STY", raising=False)
    return sent


async def test_the_tui_notifies_the_desktop_when_a_job_it_saw_finishes_or_fails(written):
    running = job(0, "running")
    link = ScriptedLink([running, job(1)])
    app = LanDiffApp(link=link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: link.connected and app.engine_info is not None, what="the connection")
        await pilot.pause()
        link.publish("job_finished", job_id=job(1).id, video="/v1.mp4", frames=49, fps=8)  # never seen alive
        link.publish("job_finished", job_id=running.id, video="/v0.mp4", frames=49, fps=8)
        # the toast is shown by the same handler, after the desktop's notification: waited for, not that
        await until(pilot, lambda: toasts(app, "a video is ready") == 2, what="the two toasts")
        assert len(written) == 1, written
        assert [text for _, text in kitty_parts(written[0])] == ["LanDiff: video ready", running.prompt]
        link.publish("job_queued", job_id="j2", prompt="A red kite.")
        link.publish("job_failed", job_id="j2", error="out of memory")
        link.publish("job_queued", job_id="j3", prompt="Waves.")
        link.publish("job_cancelled", job_id="j3")  # the user's own doing: the toast only
        link.publish("job_queued", job_id="j4", prompt="Snow.")
        link.publish("job_finished", job_id="j4", video="/v4.mp4", frames=49, fps=8)
        await until(pilot, lambda: toasts(app, "a video is ready") == 3, what="the last toast")
        assert toasts(app, "out of memory") == 1 and len(written) == 3, written
        titles = [kitty_parts(text)[0][1] for text in written]
        assert titles == ["LanDiff: video ready", "LanDiff: job failed", "LanDiff: video ready"]
        assert kitty_parts(written[1])[1][1] == "out of memory (A red kite.)"


async def test_the_tui_without_desktop_notifications_sends_none(written):
    link = ScriptedLink([job(0, "running")])
    app = LanDiffApp(link=link, desktop_notify=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: link.connected and app.engine_info is not None, what="the connection")
        link.publish("job_finished", job_id=job(0).id, video="/v0.mp4", frames=49, fps=8)
        await until(pilot, lambda: toasts(app, "a video is ready") == 1, what="the toast")
        assert written == []
