"""The TUI's first frame stays light: what is imported and mounted before it is drawn.

Structural on purpose: timings on a loaded 2-core box are noise, but a first frame that imports the other
tabs, pydantic, the job schema or the engine's start-up code, styles the whole form or stand-ins for what
comes later, or parses the other tabs' CSS, is a slow first frame everywhere.
`python bench/tui.py` measures the time itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from landiff_tui.app import LanDiffApp

from .harness import ROOT, WAIT_S, short_dir, until
from .tui_double import ScriptedLink, job

# run in a fresh interpreter on a real pseudo-terminal: at the first frame written, report and stop
CHILD = """
import gc, json, os, sys
from landiff_tui.__main__ import main  # what `landiff-tui` runs, first
from textual.drivers.linux_driver import LinuxDriver

write = LinuxDriver.write

def first_frame(driver, data):
    write(driver, data)
    if "Submit" in data:  # the Generate tab's button: the first frame is out
        app = driver._app
        widgets = [type(widget).__name__ for widget in app.screen.walk_children(with_self=True)]
        css = [path for path, _ in app.stylesheet.source]
        modules = sorted(name for name, module in sys.modules.items() if module is not None)
        report = {"modules": modules, "widgets": widgets, "gc": gc.isenabled(), "css": css}
        os.write(int(os.environ["REPORT_FD"]), json.dumps(report).encode())
        os._exit(0)

LinuxDriver.write = first_frame
main(["--model", "tiny", "--no-start"])
"""

# used only once the first frame is out: the other tabs, dialogs, replies (pydantic), starting an engine,
# the form's fields and checks (the job schema), the command palette's entries; OpenSSL never (a unix socket)
LATER = [
    "ssl",
    "pydantic",
    "engine.params",
    "landiff_tui.params",
    "landiff_tui.commands",
    "torch",
    "PIL",
    "engine.protocol",
    "engine.client",
    "engine.generation.lengths",
    "landiff_tui.views.queue",
    "landiff_tui.views.gallery",
    "landiff_tui.views.weights",
    "landiff_tui.views.engine_view",
    "landiff_tui.screens.confirm",
    "landiff_tui.screens.job_detail",
    "landiff_tui.screens.keys",
    "landiff_tui.widgets.weights_banner",
    "landiff_tui.words",
    "landiff_tui.widgets.preview",
    "textual.widgets._data_table",
    "textual.widgets._progress_bar",
    "textual.widgets._log",
    "textual.widgets._header",
    "textual.widgets._tabs",
    "textual.widgets._footer",
]
# the widgets the first frame styles: the prompt and the Submit button in their tab's pane, the empty
# panes and rows that the other tabs, the header and the tab strip mount into (16 today); the tab strip
# alone would add 8, the header 4, the form's fields 20, any other tab more
WIDGET_BUDGET = 18


def first_frame(tmp_path: Path) -> dict:
    read_end, write_end = os.pipe()
    env = {**os.environ, "LANDIFF_RUNTIME_DIR": str(short_dir()), "REPORT_FD": str(write_end)}
    env.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.set_inheritable(write_end, True)
        os.execvpe(sys.executable, [sys.executable, "-c", CHILD], env)
    os.close(write_end)
    report, deadline = b"", time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd, read_end], [], [], 0.5)
            if fd in ready:  # keep the terminal drained so the app never blocks writing
                with contextlib.suppress(OSError):  # the child's side closed
                    os.read(fd, 1 << 16)
            if read_end in ready:
                chunk = os.read(read_end, 1 << 20)
                if not chunk:
                    break
                report += chunk
    finally:
        os.close(read_end)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert report, f"the TUI drew no frame with the Generate tab's Submit button in {WAIT_S:.0f} s"
    return json.loads(report)


def test_the_first_frame_imports_and_mounts_only_the_generate_tab(tmp_path):
    frame = first_frame(tmp_path)
    early = [name for name in LATER if name in frame["modules"]]
    assert not early, f"imported before the first frame: {early}; import them where they are first used"
    views = [name for name in frame["widgets"] if name.endswith("View")]
    assert views == ["GenerateView"], f"the first frame mounts {views}: the other tabs come after it"
    assert len(frame["widgets"]) <= WIDGET_BUDGET, (
        f"the first frame styles {len(frame['widgets'])} widgets (budget {WIDGET_BUDGET}): mount what it "
        f"does not show after it (landiff_tui.widgets.deferred): {sorted(frame['widgets'])}"
    )
    assert not frame["gc"], "the collector ran while the first frame was built: main() pauses it"
    later = [path for path in frame["css"] if path.endswith("later.tcss")]
    assert not later, "the other tabs' CSS was parsed for the first frame: add_later_css adds it after"


def test_keys_typed_as_the_first_frame_shows_land_in_the_prompt(tmp_path):
    """On a real terminal, typed the moment the first frame is out, while the rest mounts after it."""
    env = {**os.environ, "LANDIFF_RUNTIME_DIR": str(short_dir()), "TERM": "xterm-256color"}
    # its own data and config dirs: no remembered form, no user's config.toml shapes what it draws
    env.update(LANDIFF_DATA_DIR=str(tmp_path / "data"), LANDIFF_CONFIG_DIR=str(tmp_path / "config"))
    for name in ("KITTY_WINDOW_ID", "WEZTERM_PANE", "TERM_PROGRAM", "LC_TERMINAL"):  # no graphics queries
        env.pop(name, None)
    env.update(COLUMNS="80", LINES="24")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execvpe(sys.executable, [sys.executable, "-m", "landiff_tui", "--no-start"], env)
    screen, typed, deadline = b"", False, time.monotonic() + WAIT_S
    try:
        while b"A heron" not in screen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                screen += os.read(fd, 1 << 16)
            if not typed and b"Submit" in screen:
                os.write(fd, b"A heron")
                typed = True
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert typed, f"no first frame in {WAIT_S:.0f} s"
    assert b"A heron" in screen, "the keys typed at the first frame did not reach the prompt"


def test_the_landiff_tui_command_is_the_launcher_that_pauses_the_collector():
    assert 'landiff-tui = "landiff_tui.__main__:main"' in (ROOT / "pyproject.toml").read_text()
    command = [sys.executable, "-m", "landiff_tui"]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=WAIT_S)
    assert result.returncode == 2 and "needs a terminal" in result.stderr


async def test_the_collector_paused_for_the_start_up_runs_again_once_every_tab_is_mounted():
    gc.disable()  # as main() does
    try:
        app = LanDiffApp(link=ScriptedLink([job(0)]), gc_paused=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.link.connected and len(app.views) == 5, what="every tab")
            assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


async def test_a_dialog_opened_before_the_other_tabs_mount_is_styled():
    from landiff_tui.screens.confirm import AskName

    app = LanDiffApp(link=ScriptedLink([]))
    app.mount_later = lambda: None  # as if a key came before the first frame was followed up
    async with app.run_test(size=(80, 24)) as pilot:
        assert not app.query("QueueView"), "the other tabs mounted: the case is not tested"
        app.push_screen(AskName("Save these parameters as the preset named:"))
        await pilot.pause()
        dialog = app.screen.query_one(".dialog")
        assert dialog.outer_size.width == 64, "the dialog has not its rules (later.tcss)"
