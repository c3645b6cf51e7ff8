"""TUI benchmarks: time to first paint, and the gallery with 10,000 jobs (search keystroke -> updated list).

    python bench/tui.py [--jobs 10000] [--repeat 5] [--paint-only] [--against OTHER_CHECKOUT] [--instructions]

First paint is measured on a real pseudo-terminal, from exec of `python -m landiff_tui` (what `landiff-tui`
runs; interpreter start included) to the first frame, with no engine answering, so it is the TUI's own
cost: wall time, and the CPU time the TUI used (its share of a loaded machine does not change that one).
The sources are byte-compiled first, as an installed package is (PYTHONDONTWRITEBYTECODE would otherwise
add their compilation to every start). "Whole screen" is the frame with what the first frame leaves out:
the header, the tab strip, every field of the Generate form and the footer. The gallery runs against a
real engine process (tiny model) over a store filled with synthetic finished jobs; the TUI itself never
imports torch.

`--against DIR` measures first paint side by side with another checkout (e.g. `git worktree add
/tmp/before HEAD~1`), run by run in turns, and prints the medians of the paired differences: the speed of a
shared machine drifts by more than most changes are worth, which one median each would mistake for them.
`--instructions` counts the instructions to the first frame instead (valgrind), which do not drift: one
run here and one in `--against`'s checkout compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = [
    "snail",
    "heron",
    "fox",
    "kite",
    "wave",
    "moss",
    "dusk",
    "beach",
    "forest",
    "city",
    "rain",
    "neon",
    "train",
    "river",
    "desert",
]


# the TUI as `landiff-tui` starts it, reporting the CPU time it used (all threads) when it has written
# every text of FRAME_MARKS (by default the first frame's Submit); measured inside because a loaded
# machine is slow to stop it from outside
CPU_TO_FIRST_FRAME = """
import gc, os, resource, sys
gc.disable()  # as landiff_tui.__main__ does before any import
from landiff_tui.__main__ import main  # first, as the launchers import it (it keeps asyncio off OpenSSL)
from textual.drivers.linux_driver import LinuxDriver

write = LinuxDriver.write
marks, written = os.environ.get("FRAME_MARKS", "Submit").split("|"), []

def first_frame(driver, data):
    write(driver, data)
    written.append(data)
    if all(mark in "".join(written) for mark in marks):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        os.write(int(os.environ["REPORT_FD"]), str(usage.ru_utime + usage.ru_stime).encode())
        os._exit(0)

LinuxDriver.write = first_frame
if os.environ.get("BARE_APP"):  # started as the TUI is, so that only the app differs
    exec(os.environ["BARE_APP"])
else:
    main(["--model", "tiny", "--no-start"])
"""


def spawn(
    arguments: list[str], env: dict[str, str], root: Path = ROOT, wrapper: tuple[str, ...] = ()
) -> tuple[int, int]:
    """(pid, terminal fd) of `python *arguments` in `root` on a new pseudo-terminal, run by `wrapper`
    (a command that takes the command line to run) when one is given."""
    import pty

    command = [*wrapper, sys.executable, *arguments]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(root)
        os.execvpe(command[0], command, env)
    return pid, fd


def stop(pid: int, fd: int) -> None:
    import signal

    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)


# for scale: a Textual app that is one button, the least any Textual app's first frame costs on this machine
BARE_TEXTUAL_APP = """
from textual.app import App
from textual.widgets import Button

class Bare(App):
    def compose(self):
        yield Button("Submit")

Bare().run()
"""
TUI = ["-m", "landiff_tui", "--model", "tiny", "--no-start"]


def paint_seconds(
    env: dict[str, str], marks: list[list[bytes]], root: Path = ROOT, arguments: list[str] = TUI
) -> list[float]:
    """Seconds from exec of `python *arguments` (the TUI) until its output holds every text of each of
    `marks`."""
    import select

    started = time.perf_counter()
    pid, fd = spawn(arguments, env, root)
    screen, seconds = b"", []
    try:
        for texts in marks:
            while not all(text in screen for text in texts):
                if not select.select([fd], [], [], 30)[0]:
                    raise RuntimeError(f"the TUI drew none of {texts} in 30 s")
                screen += os.read(fd, 1 << 16)
            seconds.append(time.perf_counter() - started)
    finally:
        stop(pid, fd)
    return seconds


def paint_cpu(
    env: dict[str, str], root: Path = ROOT, wrapper: tuple[str, ...] = (), timeout: float = 30
) -> float:
    """CPU seconds the TUI used from exec to its first frame, as it reports them (CPU_TO_FIRST_FRAME)."""
    import select

    report_read, report_write = os.pipe()
    os.set_inheritable(report_write, True)
    pid, fd = spawn(["-c", CPU_TO_FIRST_FRAME], {**env, "REPORT_FD": str(report_write)}, root, wrapper)
    os.close(report_write)
    report = b""
    try:
        while True:
            ready = select.select([fd, report_read], [], [], timeout)[0]
            if not ready:
                raise RuntimeError(f"the TUI reported no first frame in {timeout:.0f} s")
            if report_read in ready:
                chunk = os.read(report_read, 100)
                if not chunk:
                    return float(report)
                report += chunk
            if fd in ready:
                with contextlib.suppress(OSError):  # once it exited, the report is complete
                    os.read(fd, 1 << 16)  # drained, so that it never blocks writing
    finally:
        stop(pid, fd)
        os.close(report_read)


def paint_instructions(
    env: dict[str, str], root: Path = ROOT, marks: tuple[bytes, ...] = (b"Submit",)
) -> int:
    """Instructions the TUI executed from exec until it had written every text of `marks` (by default,
    its first frame), counted by valgrind's callgrind. The count repeats within about 0.1 % from run to
    run however loaded the machine is, so one run of each of two checkouts compares them (each run takes
    about 40 times as long)."""
    log = Path(tempfile.mkdtemp()) / "callgrind.log"
    wrapper = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log}")
    paint_cpu({**env, "FRAME_MARKS": b"|".join(marks).decode()}, root, wrapper, timeout=600)
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"callgrind reported no count: {log}")
    return int(found[1])


def screen_marks() -> dict[str, tuple[bytes, ...]]:
    """The texts that show each stage of the start is drawn: the first frame's Submit button; the
    header's title, the last tab of the strip and the form's field labels; the footer's last key."""
    from landiff_tui.params import FIELDS

    visible = (b"LanDiff", b"F5 Engine", *(field.label.encode() for field in FIELDS))
    return {"first frame": (b"Submit",), "header, tabs, form": visible, "whole screen": (*visible, b"Quit")}


def compile_sources(root: Path) -> None:
    for package in (["landiff_tui"], ["-l", "engine"]):  # the TUI, and the engine's client side it imports
        subprocess.run([sys.executable, "-m", "compileall", "-q", *package], cwd=root, check=True)


def terminal_env() -> dict[str, str]:
    env = {**os.environ, "LANDIFF_RUNTIME_DIR": tempfile.mkdtemp(), "TERM": "xterm-256color"}
    env.update(COLUMNS="80", LINES="24")
    return env


def first_paint(repeat: int) -> dict[str, list[float]]:
    """Seconds to the first frame and to the whole screen on a real pseudo-terminal (80x24); import time."""

    compile_sources(ROOT)
    env = terminal_env()
    code = "import time, sys; t = time.perf_counter(); import landiff_tui.app; "
    code += "print(time.perf_counter() - t, 'torch' in sys.modules)"
    found: dict[str, list[float]] = {
        "import": [],
        "torch": [],
        "paint": [],
        "paint cpu": [],
        "form": [],
        "bare": [],
    }
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        seconds, loaded = out.stdout.split()
        found["import"].append(float(seconds))
        found["torch"].append(float(loaded == "True"))
    whole = list(screen_marks()["whole screen"])
    for _ in range(repeat):
        # the Generate tab's Submit button: the first frame is out
        paint, form = paint_seconds(env, [[b"Submit"], whole])
        found["paint"].append(paint)
        found["form"].append(form)
        found["paint cpu"].append(paint_cpu(env))
        found["bare"] += paint_seconds(env, [[b"Submit"]], arguments=["-c", BARE_TEXTUAL_APP])
    return found


def side_by_side(other: Path, repeat: int) -> None:
    """First paint here and in the checkout `other`, in turns (which goes first alternates)."""
    roots = {"this": ROOT, "other": other}
    for root in roots.values():
        compile_sources(root)
    env = terminal_env()
    found = {name: {"paint": [], "paint cpu": []} for name in roots}
    for round_ in range(repeat):
        for name in list(roots)[:: 1 if round_ % 2 == 0 else -1]:
            found[name]["paint"].append(paint_seconds(env, [[b"Submit"]], roots[name])[0])
            found[name]["paint cpu"].append(paint_cpu(env, roots[name]))
    print(f"first paint, {os.cpu_count()} CPUs, {repeat} rounds; this: {ROOT}, other: {other}")
    for measure in ("paint", "paint cpu"):
        this, there = found["this"][measure], found["other"][measure]
        change = [mine - theirs for mine, theirs in zip(this, there, strict=True)]
        faster = sum(value < 0 for value in change)
        print(
            f"{measure:<9}  this {statistics.median(this) * 1000:6.1f} ms  other "
            f"{statistics.median(there) * 1000:6.1f} ms  this - other, paired: median "
            f"{statistics.median(change) * 1000:+6.1f} ms (this faster in {faster} of {repeat})"
        )


def count_instructions(other: Path | None) -> None:
    roots = {"this": ROOT} | ({"other": other} if other else {})
    env = terminal_env()
    for root in roots.values():
        compile_sources(root)
    print(f"instructions from exec to each stage of the screen (callgrind), M; this: {ROOT}", end="")
    print(f", other: {other}" if other else "")
    print(f"| {'drawn':<20} | {'this':>8} |" + (f" {'other':>8} | {'this/other':>10} |" if other else ""))
    print(f"|{'-' * 22}|{'-' * 10}|" + (f"{'-' * 10}|{'-' * 12}|" if other else ""))
    for stage, marks in screen_marks().items():
        counts = {name: paint_instructions(env, root, marks) / 1e6 for name, root in roots.items()}
        line = f"| {stage:<20} | {counts['this']:8.1f} |"
        if other:
            line += f" {counts['other']:8.1f} | {counts['this'] / counts['other']:10.3f} |"
        print(line, flush=True)
    bare = paint_instructions({**env, "BARE_APP": BARE_TEXTUAL_APP}) / 1e6
    print(f"for scale: a bare one-button Textual app, started the same way, to its first frame: {bare:.1f} M")


def fill_store(data: Path, count: int) -> None:
    from sqlalchemy import insert

    from engine.daemon.store import JobRow, Store

    store = Store(data / "landiff.db")
    rng = random.Random(0)
    now = time.time()
    rows = []
    for index in range(count):
        prompt = " ".join(rng.choice(WORDS) for _ in range(8)) + f" #{index}"
        params = {
            "prompt": prompt,
            "seed": index,
            "cfg": 7.5,
            "motion_score": 0.1,
            "temperature": 1.0,
            "steps": 50,
        }
        rows.append(
            {
                "id": uuid.uuid4().hex[:12],
                "created_at": now - index,
                "status": "finished",
                "prompt": prompt,
                "params": json.dumps(params),
                "model": "tiny",
                "engine_version": "bench",
                "weights_sha256": "{}",
                "timings": json.dumps({"denoise": 1.0}),
            }
        )
    with store.session() as session:
        session.execute(insert(JobRow), rows)
        session.commit()


async def gallery(count: int, repeat: int) -> dict[str, list[float]]:
    from landiff_tui.app import LanDiffApp

    app = LanDiffApp(model="tiny", autostart=False)
    timings: dict[str, list[float]] = {
        "first page": [],
        "keystroke -> list": [],
        "query": [],
        "next page": [],
    }
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.link.connected:
            await pilot.pause(0.05)
        while (await app.link.request("status")).device.startswith("starting"):
            await pilot.pause(0.2)  # the engine's worker is still importing torch: it would skew the timings
        await pilot.press("f3")
        view = app.query_one("GalleryView")
        for _ in range(repeat):
            await app.workers.wait_for_complete()
            generation = view.generation
            started = time.perf_counter()
            view.reload()
            while view.generation == generation or view.fetching or app.workers._workers:
                await pilot.pause(0.005)
            timings["first page"].append(time.perf_counter() - started)
        search = app.query_one("#search")
        search.focus()
        for word in (WORDS * repeat)[:repeat]:
            search.value = ""
            await pilot.pause(0.3)
            await app.workers.wait_for_complete()
            await pilot.press(*word[:2])
            await pilot.pause(0.3)  # past the debounce: the list shows the first two letters' matches
            await app.workers.wait_for_complete()
            generation = view.generation
            started = time.perf_counter()
            await pilot.press(word[2])
            while view.generation == generation or view.fetching or app.workers._workers:
                await pilot.pause(0.005)
            timings["keystroke -> list"].append(time.perf_counter() - started)
            timings["query"].append(view.last_query_s)
        search.value = ""
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        table = app.query_one("#gallery-table")
        table.focus()
        before = len(view.rows)
        started = time.perf_counter()
        table.move_cursor(row=before - 1)
        while len(view.rows) == before:
            await pilot.pause(0.005)
        timings["next page"].append(time.perf_counter() - started)
    return timings


def row(stage: str, values: list[float], rate: str = "") -> str:
    median = statistics.median(values)
    return f"| {stage:<41} | {median * 1000:9.1f} ms | {rate:<22} | {len(values):>3} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--paint-only", action="store_true", help="only the first paint (no engine)")
    parser.add_argument("--against", type=Path, help="first paint side by side with this other checkout")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions to the first frame (valgrind's callgrind), here and in --against's checkout",
    )
    args = parser.parse_args()
    if args.against is not None and not (args.against / "landiff_tui" / "__main__.py").is_file():
        parser.error(f"--against {args.against}: no landiff_tui there; give a checkout of this repo")
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.error("--instructions counts with valgrind, which is not installed (apt install valgrind)")
        count_instructions(args.against.resolve() if args.against else None)
        return
    if args.against is not None:
        side_by_side(args.against.resolve(), args.repeat)
        return

    load = os.getloadavg()[0]
    paint = first_paint(args.repeat)
    timings, filled = {}, 0.0
    if not args.paint_only:
        base = Path(tempfile.mkdtemp())
        os.environ.update(
            LANDIFF_RUNTIME_DIR=str(base / "run"),
            LANDIFF_DATA_DIR=str(base / "data"),
            LANDIFF_HOME=str(base / "weights"),
            HF_HUB_OFFLINE="1",
        )
        started = time.perf_counter()
        fill_store(base / "data", args.jobs)
        filled = time.perf_counter() - started
        engine = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--model", "tiny"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert engine.stdout.readline().startswith("ready")
            timings = asyncio.run(gallery(args.jobs, args.repeat))
        finally:
            engine.terminate()
            engine.wait(30)

    print(f"landiff-tui benchmarks, {os.cpu_count()} CPUs, load average {load:.1f} at the start", end="")
    print(f", {args.jobs:,} jobs in the store (filled in {filled:.1f} s)" if timings else "")
    print(f"| {'stage':<41} | {'median':>12} | {'rate / note':<22} | {'n':>3} |")
    print(f"|{'-' * 43}|{'-' * 14}|{'-' * 24}|{'-' * 5}|")
    torch_loaded = "YES" if any(paint["torch"]) else "no"
    print(row("import landiff_tui.app", paint["import"], f"torch imported: {torch_loaded}"))
    cpu = f"CPU {statistics.median(paint['paint cpu']) * 1000:.0f} ms"
    print(row("first paint (exec -> first frame, pty)", paint["paint"], cpu))
    print(row("whole screen (header, tabs, form, footer)", paint["form"]))
    print(row("for scale: bare Textual app, 1 button", paint["bare"], "first paint, in turns"))
    if timings:
        print(row("gallery first page (100 rows)", timings["first page"]))
        print(row("search: keystroke -> updated list", timings["keystroke -> list"], "incl. 150 ms debounce"))
        print(row("search: engine query + table fill", timings["query"]))
        print(row("next page on scroll (100 rows)", timings["next page"]))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"peak memory (this process, TUI side): {peak:.0f} MiB RSS")


if __name__ == "__main__":
    main()
